"""A config over several seeds (`make speedrun`, `make strong`): each seed fit and tested in new processes.

Prints a Markdown table: per seed, the training seconds (sum of the epochs' seconds in
history.csv: training plus validation, no start-up), the seconds until validation accuracy first
reached 99.0% and 99.5% (time to accuracy; "—" if never), and the test accuracy of the final
weights; then the mean and the worst. With --robustness, also the final weights' mean
accuracy over the robustness suite (benchmarks/robustness.py), over its users' shifts and over
its low-resolution scans.
"""

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run import KEEP_FREED_MEMORY, ROOT, cpu_name
from time_to_accuracy import seconds_to


def run_seed(configs: list[str], seed: int, data_dir: str, logs: str) -> dict[str, float | None]:
    """Fit and test one seed in ``logs``: its training seconds, the seconds until validation
    accuracy first reached 99.0% and 99.5%, and the final weights' test accuracy."""
    layered = [arg for config in configs for arg in ("--config", config)]
    common = [*layered, "--seed_everything", str(seed),
              "--trainer.default_root_dir", logs, "--data.data_dir", data_dir]  # fmt: skip
    env = {**os.environ, **KEEP_FREED_MEMORY}
    for subcommand in ("fit", "test"):
        extra = ["--ckpt_path", "last"] if subcommand == "test" else []
        print(f"$ mnistlit {subcommand} seed {seed}", file=sys.stderr, flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "mnistlit", subcommand, *common, *extra],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(f"seed {seed} {subcommand} failed:\n{result.stderr[-2000:]}")
    with open(Path(logs, "lightning_logs", "version_0", "history.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    seconds = [float(row["seconds"]) for row in rows]
    val_accs = [float(row["val_acc"]) for row in rows]
    return {
        "training seconds": sum(seconds),
        "s to 99.0% val": seconds_to(0.99, seconds, val_accs),
        "s to 99.5% val": seconds_to(0.995, seconds, val_accs),
        "test acc": float(re.search(r"test_acc\s+([0-9.]+)", result.stdout).group(1)),
    }


def cell(column: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if column.startswith(("training seconds", "s to")) else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="repeat to layer configs (default: speedrun)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--robustness", action="store_true", help="also score the robustness suite")
    args = parser.parse_args()
    configs = args.config or ["configs/speedrun.yaml"]
    suite = robustness_suite(args.data_dir) if args.robustness else None
    results = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as logs:
            results[seed] = run_seed(configs, seed, args.data_dir, logs)
            if suite is not None:
                scores = suite(Path(logs, "lightning_logs", "version_0", "checkpoints", "last.ckpt"))
                names = ("suite mean", "users' shifts mean", "low-res scans mean")
                results[seed].update(zip(names, scores, strict=True))
        print(f"seed {seed}: {results[seed]}", file=sys.stderr, flush=True)
    columns = list(results[args.seeds[0]])
    print(f"\n{' + '.join(configs)}, {cpu_name()}\n")
    print("| seed | " + " | ".join(columns) + " |")
    print("|---:|" + "---:|" * len(columns))
    for seed, values in results.items():
        print(f"| {seed} | " + " | ".join(cell(c, values[c]) for c in columns) + " |")
    for name, summary in (("mean", statistics.mean), ("worst", None)):
        cells = []
        for column in columns:
            values = [values[column] for values in results.values()]
            if None in values:
                cells.append("—")
            elif summary is None:  # the slowest time, the lowest accuracy
                cells.append(
                    cell(column, max(values) if column.startswith(("training", "s to")) else min(values))
                )
            else:
                cells.append(cell(column, summary(values)))
        print(f"| {name} | " + " | ".join(cells) + " |")


def robustness_suite(data_dir: str):
    """A function scoring a checkpoint on the robustness suite (corrupted once, for every seed)."""
    from robustness import predictions, test_sets, with_means

    from mnistlit.core.datasets import read_idx
    from mnistlit.core.module import LitClassifier

    folder = Path(data_dir) / "mnist"
    digits = read_idx(folder / "t10k-images-idx3-ubyte").numpy()
    labels = read_idx(folder / "t10k-labels-idx1-ubyte").numpy()
    sets = test_sets(digits, seed=0)

    def score(checkpoint: Path) -> tuple[float, float, float]:
        model = LitClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
        answers = {name: predictions(model, images) for name, images in sets.items()}
        scores = with_means({name: float((p == labels).mean()) for name, p in answers.items()})
        return scores["mean, all corruptions"], scores["mean, users' shifts"], scores["mean, low-res scans"]

    return score


if __name__ == "__main__":
    main()
