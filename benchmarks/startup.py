"""How long a command takes from a cold shell: start-up and shutdown around the work.

Four commands, each started as a new process ``--rounds`` times (median, and the slowest):
``mnistlit --version``, ``mnistlit fit --help``, ``predict`` of one image with a speedrun
checkpoint, and speedrun's whole ``fit``. Then the biggest imports of ``predict``
(``python -X importtime``, cumulative), and whether torchvision or scipy was among them:
torchmetrics imports both whenever they are installed, and mnistlit needs neither.
"""

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import measured
from run import KEEP_FREED_MEMORY, ROOT

TARGETS = {"--version": 1.0, "fit --help": 4.0, "predict of one image": 4.0, "speedrun fit": 10.0}
AS_TYPED = {
    "--version": "mnistlit --version",
    "fit --help": "mnistlit fit --help",
    "predict of one image": (
        "mnistlit predict --config configs/speedrun.yaml --ckpt_path last.ckpt --data.predict_dir …"
    ),
    "speedrun fit": "mnistlit fit --config configs/speedrun.yaml",
}


def seconds(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **KEEP_FREED_MEMORY}, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def biggest_imports(cmd: list[str], cwd: Path, top: int) -> tuple[list[tuple[str, float]], set[str]]:
    """The ``top`` packages by cumulative import time (s) when ``cmd`` runs as ``python -X importtime``
    (each package's own line: it includes what it imports), and every module imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *cmd], cwd=cwd, capture_output=True, text=True
    )
    packages: dict[str, float] = {}
    modules: set[str] = set()
    for line in result.stderr.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s+(\S+)", line)
        if found:
            modules.add(found.group(2))
            if "." not in found.group(2) and found.group(2) != "mnistlit":
                packages[found.group(2)] = int(found.group(1)) / 1e6
    return sorted(packages.items(), key=lambda item: -item[1])[:top], modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--json", help="folder to write the table into as JSON (docs/measurements)")
    parser.add_argument(
        "--mnistlit",
        default=str(Path(sys.executable).parent / "mnistlit"),
        help="the command to time (default: the console script beside this Python, as a user types it)",
    )
    args = parser.parse_args()
    mnistlit = shlex.split(args.mnistlit)

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        speedrun = str(ROOT / "configs/speedrun.yaml")
        fit = [*mnistlit, "fit", "--config", speedrun, "--data.data_dir", args.data_dir]
        commands = {"--version": [*mnistlit, "--version"], "fit --help": [*mnistlit, "fit", "--help"]}
        timings: dict[str, list[float]] = {name: [] for name in TARGETS}
        for round_ in range(args.rounds):
            print(f"round {round_ + 1} of {args.rounds}", file=sys.stderr, flush=True)
            for name, cmd in commands.items():
                timings[name].append(seconds(cmd, work))
            timings["speedrun fit"].append(seconds(fit, work))
            if round_ == 0:  # the first run's checkpoint and one of its test digits, for predict
                digits = work / "digits"
                digits.mkdir()
                make_one_digit(Path(args.data_dir), digits / "seven.png")
                checkpoint = str(work / "lightning_logs/version_0/checkpoints/last.ckpt")
                commands["predict of one image"] = [
                    *mnistlit, "predict", "--config", speedrun,
                    "--ckpt_path", checkpoint, "--data.predict_dir", str(digits),
                ]  # fmt: skip
                timings["predict of one image"].append(seconds(commands["predict of one image"], work))
        imports, modules = biggest_imports(
            ["-m", "mnistlit", *commands["predict of one image"][len(mnistlit) :]], work, 8
        )

    columns = ["command", "as typed", "median s", "slowest s", "target s"]
    rows = [
        [
            name,
            f"`{AS_TYPED[name]}`",
            round(statistics.median(values), 2),
            round(max(values), 2),
            TARGETS[name],
        ]
        for name, values in timings.items()
    ]
    note = "Biggest imports of predict (cumulative s): " + ", ".join(f"{p} {s:.2f}" for p, s in imports)
    tolerated = [name for name in ("torchvision", "scipy") if name in modules]
    note += (
        f"; **{' and '.join(tolerated)} imported**."
        if tolerated
        else "; neither torchvision nor scipy imported."
    )
    print(measured.markdown({"machine": measured.machine(), "date": "today", "command": "startup.py",
                             "columns": columns, "rows": rows, "note": note}))  # fmt: skip
    if args.json:
        command = f"python benchmarks/startup.py --rounds {args.rounds}"
        print(measured.write(args.json, "startup", command, columns, rows, note), file=sys.stderr)


def make_one_digit(data_dir: Path, path: Path) -> None:
    """The first test digit as a PNG, as a user would save it."""
    from PIL import Image

    from mnistlit.core.datasets import read_idx

    Image.fromarray(read_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte")[0].numpy()).save(path)


if __name__ == "__main__":
    main()
