"""`make bench`: the plain loop, mnistlit through its CLI, and the seed's pipeline, one after
another in separate processes, on the same data, network, optimizer, batch size and seed.

Every process runs with glibc's malloc told to keep freed memory (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_): by default it hands large freed blocks back to the OS and
page-faults fresh ones in on the next step, and how often depends on the process's history,
so the same script took 10.2 s or 14 s an epoch from one process to the next. The plain
loop and mnistlit alternate for several rounds, in the order plain-mnistlit, then
mnistlit-plain (so a slow drift of the machine's speed favours neither), and each mnistlit
epoch is compared with the same epoch of the plain loop's run in its round.
Prints a Markdown table: median seconds per epoch (train + validation) over the epochs after
the first, the median of the paired ratios to the plain loop, final validation and test
accuracy, and each process's peak resident memory.
"""

import argparse
import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd``; return its stdout and its own peak resident memory in MB."""
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    with tempfile.TemporaryFile("w+") as out:
        env = {**os.environ, **KEEP_FREED_MEMORY}
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stdout = out.read()
    if process.returncode != 0:
        raise SystemExit(f"benchmark step failed ({process.returncode}): {' '.join(cmd)}\n{stdout[-2000:]}")
    return stdout, usage.ru_maxrss / 1024


def script(name: str, epochs: int, data_dir: str, *extra: str) -> dict:
    stdout, rss = run(
        [sys.executable, str(BENCH / name), "--epochs", str(epochs), "--data-dir", data_dir, *extra]
    )
    return {**json.loads(stdout.strip().splitlines()[-1]), "rss_mb": rss}


def mnistlit(epochs: int, data_dir: str, accelerator: str, logs: str, test: bool) -> dict:
    cli = [sys.executable, "-m", "mnistlit"]
    common = [
        "--config",
        "configs/base.yaml",
        "--trainer.accelerator",
        accelerator,
        "--trainer.default_root_dir",
        logs,
        "--data.data_dir",
        data_dir,
    ]
    # Early stopping is pushed out of reach so that every run does the same number of epochs.
    _, rss = run(
        [
            *cli,
            "fit",
            *common,
            "--trainer.max_epochs",
            str(epochs),
            "--early_stopping.patience",
            str(epochs + 1),
        ]
    )
    with open(Path(logs, "lightning_logs", "version_0", "history.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    test_acc = float("nan")
    if test:
        stdout, _ = run([*cli, "test", *common, "--ckpt_path", "last"])
        test_acc = float(re.search(r"test_acc\s+([0-9.]+)", stdout).group(1))
    return {
        "epoch_seconds": [float(r["seconds"]) for r in rows],
        "val_acc": float(rows[-1]["val_acc"]),
        "test_acc": test_acc,
        "rss_mb": rss,
    }


def paired_ratios(runs: list[dict], baselines: list[dict]) -> list[float]:
    """Each timed epoch (all but the first of a run) over the same epoch of its baseline run, sorted."""
    seconds = [s for r in runs for s in r["epoch_seconds"][1:]]
    baseline = [s for r in baselines for s in r["epoch_seconds"][1:]]
    return sorted(s / p for s, p in zip(seconds, baseline, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--rounds", type=int, default=8, help="alternating plain/mnistlit rounds")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is warm-up and not timed")

    plain_runs, mnistlit_runs = [], []
    for round_ in range(args.rounds):
        last = round_ == args.rounds - 1  # test accuracy is reported for the last round only
        with tempfile.TemporaryDirectory() as logs:
            if round_ % 2:
                mnistlit_runs.append(mnistlit(args.epochs, args.data_dir, args.device, logs, last))
            plain_runs.append(script("plain_loop.py", args.epochs, args.data_dir, "--device", args.device))
            if not round_ % 2:
                mnistlit_runs.append(mnistlit(args.epochs, args.data_dir, args.device, logs, last))
        paired = zip(plain_runs[-1]["epoch_seconds"], mnistlit_runs[-1]["epoch_seconds"], strict=True)
        print(
            "round: plain / mnistlit s per epoch:", [f"{p:.2f}/{m:.2f}" for p, m in paired], file=sys.stderr
        )
    seed_run = script("seed_pipeline.py", args.epochs, args.data_dir)
    results = {
        "plain PyTorch loop": (plain_runs, plain_runs),
        "mnistlit (CLI, base.yaml)": (mnistlit_runs, plain_runs),
        "seed pipeline (CPU)": ([seed_run], plain_runs[-1:]),
    }

    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(
        f"\n{args.rounds} rounds of {args.epochs} epochs (55,000 train + 5,000 validation images), "
        f"seed Net, batch 128; {device}, {os.cpu_count()} CPU cores, torch {torch.__version__}\n"
    )
    print("| run | s/epoch (median) | ratio to plain loop | val acc | test acc | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (runs, baselines) in results.items():
        seconds = [s for r in runs for s in r["epoch_seconds"][1:]]
        last = runs[-1]
        print(
            f"| {name} | {statistics.median(seconds):.2f} | "
            f"{statistics.median(paired_ratios(runs, baselines)):.3f}× | {last['val_acc']:.4f} | "
            f"{last['test_acc']:.4f} | {max(r['rss_mb'] for r in runs):.0f} MB |"
        )
    ratios = paired_ratios(mnistlit_runs, plain_runs)
    if len(ratios) >= 4:
        low, _, high = statistics.quantiles(ratios, n=4)
        print(
            f"\nmnistlit / plain loop, {len(ratios)} paired epochs: middle half {low:.3f}–{high:.3f}×, "
            f"all {ratios[0]:.3f}–{ratios[-1]:.3f}×"
        )


if __name__ == "__main__":
    main()
