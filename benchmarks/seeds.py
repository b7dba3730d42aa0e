"""A config over several seeds (`make speedrun`, `make strong`): each seed fit and tested in new processes.

Prints a Markdown table: per seed, the training seconds (sum of the epochs' seconds in
history.csv: training plus validation, no start-up) and the test accuracy of the final
weights; then the mean and the minimum.
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


def run_seed(configs: list[str], seed: int, data_dir: str, logs: str) -> tuple[float, float]:
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
        seconds = sum(float(row["seconds"]) for row in csv.DictReader(f))
    return seconds, float(re.search(r"test_acc\s+([0-9.]+)", result.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="repeat to layer configs (default: speedrun)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    configs = args.config or ["configs/speedrun.yaml"]
    results = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as logs:
            results[seed] = run_seed(configs, seed, args.data_dir, logs)
        print(
            f"seed {seed}: {results[seed][0]:.1f} s, test_acc {results[seed][1]:.4f}",
            file=sys.stderr,
            flush=True,
        )
    print(f"\n{' + '.join(configs)}, {cpu_name()}\n")
    print("| seed | training seconds | test acc |")
    print("|---:|---:|---:|")
    for seed, (seconds, accuracy) in results.items():
        print(f"| {seed} | {seconds:.1f} | {accuracy:.4f} |")
    seconds, accuracies = zip(*results.values(), strict=True)
    print(f"| mean | {statistics.mean(seconds):.1f} | {statistics.mean(accuracies):.4f} |")
    print(f"| worst | {max(seconds):.1f} | {min(accuracies):.4f} |")


if __name__ == "__main__":
    main()
