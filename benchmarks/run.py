"""`make bench`: the plain loop and mnistlit through its CLI, in fp32 and bf16-mixed, and the seed's
pipeline, one after another in separate processes, on the same data, network, optimizer, batch
size and seed; then the network's FLOPs and this machine's peak (benchmarks/flops.py).

Every process runs with glibc's malloc told to keep freed memory (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_): by default it hands large freed blocks back to the OS and
page-faults fresh ones in on the next step, and how often depends on the process's history,
so the same script took 10.2 s or 14 s an epoch from one process to the next. In each round
and precision the plain loop and mnistlit alternate, plain first in even rounds and mnistlit
first in odd ones (so a slow drift of the machine's speed favours neither), and each mnistlit
epoch is compared with the same epoch of the plain loop's run in its round; the plain loop in
bf16 runs forward and loss under the same autocast as Lightning's bf16-mixed.
Prints a Markdown table: median seconds per epoch (train + validation) over the epochs after
the first, the median of the paired ratios to the same precision's plain loop and to the fp32
plain loop, the speed-up over the seed pipeline, achieved GFLOP/s and its fraction of the
measured peak, final validation and test accuracy, and each process's peak resident memory.
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

import measured
import torch
from flops import epoch_flops, peak_gflops

from mnistlit.core.nets import Net
from mnistlit.runs.precision import cpu_bf16_instructions

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("32-true", "bf16-mixed")
DTYPES = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16}
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


def mnistlit(
    epochs: int,
    data_dir: str,
    device: str,
    precision: str,
    logs: str,
    *extra: str,
    config: str = "configs/base.yaml",
) -> dict:
    """Fit ``config`` (and ``extra`` arguments) for ``epochs`` through the CLI; history, test accuracy."""
    cli = [sys.executable, "-m", "mnistlit"]
    common = [
        *("--config", config, "--trainer.accelerator", device, "--trainer.precision", precision),
        *("--trainer.default_root_dir", logs, "--data.data_dir", data_dir, *extra),
    ]
    # Early stopping is pushed out of reach so that every run does the same number of epochs.
    limits = ["--trainer.max_epochs", str(epochs), "--early_stopping.patience", str(epochs + 1)]
    _, rss = run([*cli, "fit", *common, *limits])
    with open(Path(logs, "lightning_logs", "version_0", "history.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    stdout, _ = run([*cli, "test", *common, "--ckpt_path", "last"])
    return {
        "epoch_seconds": [float(r["seconds"]) for r in rows],
        "val_accs": [float(r["val_acc"]) for r in rows],
        "test_acc": float(re.search(r"test_acc\s+([0-9.]+)", stdout).group(1)),
        "rss_mb": rss,
    }


def measured_precisions(device: str) -> list[str]:
    """bf16 where it is computed natively: elsewhere mnistlit trains a bf16 recipe in fp32
    (runs/precision.py) while a plain loop would emulate bf16, and no ratio would mean anything."""
    if device == "cuda" or cpu_bf16_instructions():
        return list(PRECISIONS)
    print("bf16-mixed not measured: this CPU has no AVX512-BF16 or AMX", file=sys.stderr)
    return ["32-true"]


def timed(runs: list[dict]) -> list[float]:
    """The timed epochs (all but the first of each run)."""
    return [s for r in runs for s in r["epoch_seconds"][1:]]


def paired_ratios(runs: list[dict], baselines: list[dict]) -> list[float]:
    """Each timed epoch over the same epoch of its baseline run (the same round), sorted."""
    return sorted(s / p for s, p in zip(timed(runs), timed(baselines), strict=True))


def spread(ratios: list[float]) -> str:
    low, _, high = statistics.quantiles(ratios, n=4)
    middle = statistics.median(ratios)
    return f"median {middle:.3f}×, middle half {low:.3f}–{high:.3f}×, all {ratios[0]:.3f}–{ratios[-1]:.3f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per precision")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--compile", action="store_true", help="also time mnistlit with --model.compile true")
    parser.add_argument("--json", metavar="FOLDER", help="also write the table as JSON there (make docs)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is warm-up and not timed")

    precisions = measured_precisions(args.device)
    plain: dict[str, list[dict]] = {precision: [] for precision in precisions}
    ours: dict[str, list[dict]] = {precision: [] for precision in precisions}
    compiled: dict[str, list[dict]] = {precision: [] for precision in precisions}
    for round_ in range(args.rounds):
        for precision in precisions:
            with tempfile.TemporaryDirectory() as logs:
                for name in ("mnistlit", "plain") if round_ % 2 else ("plain", "mnistlit"):
                    if name == "plain":
                        flags = ["--device", args.device, "--precision", precision]
                        plain[precision].append(script("plain_loop.py", args.epochs, args.data_dir, *flags))
                    else:
                        ours[precision].append(
                            mnistlit(args.epochs, args.data_dir, args.device, precision, logs)
                        )
            paired = zip(
                plain[precision][-1]["epoch_seconds"], ours[precision][-1]["epoch_seconds"], strict=True
            )
            print(f"round {round_} {precision}: plain / mnistlit s per epoch:",
                  [f"{p:.2f}/{m:.2f}" for p, m in paired], file=sys.stderr)  # fmt: skip
            if args.compile:
                with tempfile.TemporaryDirectory() as logs:
                    flags = ("--model.compile", "true")
                    compiled[precision].append(
                        mnistlit(args.epochs, args.data_dir, args.device, precision, logs, *flags)
                    )
    seed_run = script("seed_pipeline.py", args.epochs, args.data_dir) if args.device == "cpu" else None

    # (name, precision, runs, their plain loop's runs)
    rows = []
    for precision in precisions:
        rows.append((f"plain PyTorch loop, {precision}", precision, plain[precision], None))
        rows.append((f"mnistlit (CLI, base.yaml), {precision}", precision, ours[precision], plain[precision]))
        if compiled[precision]:
            rows.append(
                (f"mnistlit, compiled, {precision}", precision, compiled[precision], plain[precision])
            )
    if seed_run is not None:
        rows.append(("seed pipeline (DataLoader, ToTensor, tqdm)", "32-true", [seed_run], None))

    device = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    peaks = {precision: peak_gflops(DTYPES[precision], args.device) for precision in precisions}
    per_epoch = epoch_flops(Net())
    seed_seconds = statistics.median(timed([seed_run])) if seed_run else None
    fp32_plain = plain["32-true"]
    print(
        f"\n{args.rounds} rounds of {args.epochs} epochs (55,000 train + 5,000 validation images), "
        f"seed Net, batch 128; {device}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}\n"
    )
    print(
        "| run | s/epoch (median) | ratio to its plain loop | ratio to fp32 plain loop | "
        "faster than seed | GFLOP/s | of peak | val acc | test acc | peak RSS |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    table = []
    for name, precision, runs, baselines in rows:
        seconds = statistics.median(timed(runs))
        achieved = per_epoch / seconds / 1e9
        own = f"{statistics.median(paired_ratios(runs, baselines)):.3f}×" if baselines else "—"
        versus_fp32 = statistics.median(paired_ratios(runs, fp32_plain[-len(runs) :]))
        versus_seed = f"{seed_seconds / seconds:.2f}×" if seed_seconds else "—"
        of_peak = achieved / max(peaks[precision].values())
        print(
            f"| {name} | {seconds:.2f} | {own} | {versus_fp32:.3f}× | {versus_seed} | {achieved:.0f} | "
            f"{of_peak:.0%} | {runs[-1]['val_accs'][-1]:.4f} | {runs[-1]['test_acc']:.4f} | "
            f"{max(r['rss_mb'] for r in runs):.0f} MB |"
        )
        table.append([name, round(seconds, 2), own, f"{versus_fp32:.3f}×", versus_seed, round(achieved),
                      f"{of_peak:.0%}", round(runs[-1]["test_acc"], 4)])  # fmt: skip
    print(
        f"\nFLOPs: {per_epoch / 1e12:.3f} TFLOP an epoch (seed Net: forward and backward of 55,000 images, "
        "forward of 5,000; python benchmarks/flops.py lists them per layer)"
    )
    for precision, peak in peaks.items():
        print(
            f"peak {precision}: " + ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in peak.items())
        )
    spreads = []
    for precision in precisions:
        if len(timed(ours[precision])) >= 4:
            ratios = paired_ratios(ours[precision], plain[precision])
            spreads.append(
                f"mnistlit / plain loop, {precision}, {len(ratios)} paired epochs: {spread(ratios)}"
            )
            print(spreads[-1])
    if "bf16-mixed" in precisions and len(timed(ours["bf16-mixed"])) >= 4:
        print(
            f"mnistlit bf16-mixed / fp32 plain loop: {spread(paired_ratios(ours['bf16-mixed'], fp32_plain))}"
        )
    if args.json:
        columns = ["run", "s/epoch (median)", "ratio to its plain loop", "ratio to fp32 plain loop",
                   "faster than seed", "GFLOP/s", "of peak", "test acc"]  # fmt: skip
        note = f"{args.rounds} rounds of {args.epochs} epochs, the first of each run not timed. " + "; ".join(
            spreads
        )
        if "bf16-mixed" not in precisions:
            note += ". No bf16: this CPU has no AVX512-BF16 or AMX."
        command = f"make bench (benchmarks/run.py --epochs {args.epochs} --rounds {args.rounds})"
        print(f"\nwritten: {measured.write(args.json, 'bench', command, columns, table, note)}")


if __name__ == "__main__":
    main()
