"""What the tests share: synthetic MNIST written as real IDX files, ways to run the CLI (in this
process with ``cli``, or in a new one with ``run_cli``/``start_cli`` where the process itself is
the point), and assertions that read as the guarantees they check.

The synthetic MNIST is procedurally drawn seven-segment digits. The files carry their own MD5s,
passed to the code through the same `dataset` config a user would write for any MNIST-format
dataset, so checksum verification stays on.
"""

import contextlib
import hashlib
import io
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import traceback
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from mnistlit.core.datasets import idx_bytes
from mnistlit.deploy.preprocess import MNIST_CENTRE

ROOT = Path(__file__).resolve().parents[1]


BASE_CONFIG = ROOT / "configs" / "base.yaml"


CONFIGS = ("--config", str(BASE_CONFIG), "--config", "tiny.yaml")  # base.yaml with tiny.yaml on top


FIT = ("fit", *CONFIGS, "--trainer.max_epochs", "4", "--model.lr_scheduler.init_args.T_max", "4",
       "--trainer.deterministic", "true", "--last_checkpoint.every_n_train_steps", "5")  # fmt: skip


FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


SEGMENTS = {
    0: "1110111", 1: "0010010", 2: "1011101", 3: "1011011", 4: "0111010",
    5: "1101011", 6: "1101111", 7: "1010010", 8: "1111111", 9: "1111011",
}  # fmt: skip


def draw_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 28x28 uint8 images of jittered seven-segment digits (light ink on black) and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels, strict=True):
        top, left = rng.integers(3, 7), rng.integers(6, 11)
        height, width, thick = rng.integers(8, 10), rng.integers(8, 12), rng.integers(2, 4)
        rows = (top, top + height, top + 2 * height)
        boxes = [
            (rows[0], rows[0] + thick, left, left + width),
            (rows[0], rows[1], left, left + thick),
            (rows[0], rows[1], left + width - thick, left + width),
            (rows[1], rows[1] + thick, left, left + width),
            (rows[1], rows[2], left, left + thick),
            (rows[1], rows[2], left + width - thick, left + width),
            (rows[2] - thick, rows[2], left, left + width),
        ]
        for lit, (r0, r1, c0, c1) in zip(SEGMENTS[int(label)], boxes, strict=True):
            if lit == "1":
                image[r0:r1, c0:c1] = rng.integers(180, 256)
        noise = rng.integers(0, 40, size=(28, 28))
        image[:] = np.clip(image.astype(int) + noise, 0, 255)
    return images, labels


def write_synthetic_mnist(folder: Path, train: int = 1500, test: int = 200) -> dict[str, str]:
    """Write the four IDX files into ``folder``; return {file name: md5}."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = draw_digits(train, seed=1)
    test_x, test_y = draw_digits(test, seed=2)
    md5 = {}
    for name, array in zip(FILES, (train_x, train_y, test_x, test_y), strict=True):
        data = idx_bytes(array)
        (folder / name).write_bytes(data)
        md5[name] = hashlib.md5(data).hexdigest()
    return md5


def tiny_config(workdir: Path, md5: dict[str, str], max_epochs: int = 2) -> Path:
    """A config layered over base.yaml: the synthetic files, small batches, few epochs."""
    config = {
        "trainer": {"max_epochs": max_epochs, "enable_model_summary": False},
        "data": {
            "batch_size": 32,
            "val_size": 100,
            "dataset": {"name": "mnist", "md5": md5, "mirrors": []},
        },
    }
    path = workdir / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


CLI_ENV = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", "PYTHONPATH": str(ROOT)}
# The Python of the environment users run mnistlit in (`make test` names .venv's): the processes
# the tests start run there, without the tools of .venv-dev where pytest itself runs (whose
# torchvision and scipy torchmetrics would import at every start, and which could hide a
# dependency the runtime lacks). Absolute, not resolved: a venv's python is a link.
PYTHON = os.path.abspath(os.environ.get("MNISTLIT_PYTHON") or sys.executable)


def run_cli(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m mnistlit ARGS`` in ``workdir`` the way a user types it, in a new process:
    for the tests where the process itself is the point (its start-up, its exit, a signal)."""
    return subprocess.run(
        [PYTHON, "-m", "mnistlit", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=CLI_ENV,
    )


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """``mnistlit.runs.cli.main(ARGS)`` in this process, in ``workdir``, with what a new process
    would show: its stdout and stderr (Lightning's log lines included), and its exit status
    (a ``sys.exit("message")`` prints the message and exits 1, an uncaught exception prints its
    traceback). Seconds faster than ``run_cli``: no interpreter start, no imports."""
    from mnistlit.runs.cli import main

    out, err = io.StringIO(), io.StringIO()
    # Lightning logs to its own stderr handler, or (under pytest, whose root logger has handlers)
    # to the root logger: either way its lines reach this run's stderr, as in a new process.
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    handlers = [h for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler]
    streams = [handler.setStream(err) for handler in handlers]
    levels = [logger.level for logger in loggers]  # describe, serve and export quieten them
    ours = logging.StreamHandler(err)
    if not handlers:
        for logger in loggers:
            logger.addHandler(ours)
    environment, folder = dict(os.environ), os.getcwd()
    deterministic = torch.are_deterministic_algorithms_enabled()
    sigterm, sigint = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    argv, sys.argv = sys.argv, ["mnistlit"]  # LightningCLI warns when pytest's own arguments are there
    code: int = 0
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("default")  # shown every run, as in a new process
            try:
                main(list(args))
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - what the interpreter would print
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(folder)
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environment)
        torch.use_deterministic_algorithms(deterministic)
        signal.signal(signal.SIGTERM, sigterm)
        signal.signal(signal.SIGINT, sigint)
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(ours)
            logger.setLevel(level)
    return subprocess.CompletedProcess(["mnistlit", *args], code, out.getvalue(), err.getvalue())


def as_in_a_terminal() -> None:
    # A suite started in the background (`cmd &` in a script) hands SIG_IGN for SIGINT down to
    # its children, and Python then keeps ignoring Ctrl-C; a user's terminal does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(workdir: Path, *args: str) -> subprocess.Popen:
    """Start ``python -m mnistlit ARGS`` in ``workdir`` without waiting for it."""
    return subprocess.Popen(
        [PYTHON, "-m", "mnistlit", *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
        preexec_fn=as_in_a_terminal,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess, *phrases: str) -> None:
    """The run failed with a message, not a traceback, whose last line holds every phrase."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    for phrase in phrases:
        assert phrase in last, result.stderr[-3000:]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs"


def last_ckpt(workdir: Path, version: int) -> Path:
    return workdir / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt"


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def copy_reference(reference_run: Path, workdir: Path) -> None:
    """Put the reference run into ``workdir`` as its version_0, as if FIT had just run there."""
    shutil.copytree(
        reference_run, workdir / "lightning_logs" / "version_0", ignore=shutil.ignore_patterns(".lock")
    )


def draw_seven(size=(400, 300), origin=(250, 40), ink=0, paper=255, mode="L") -> Image.Image:
    """A thick '7' drawn in ``ink`` on ``paper``, far from the centre of a large canvas."""
    image = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(image)
    x, y = origin
    draw.line([(x, y), (x + 90, y)], fill=ink, width=14)
    draw.line([(x + 90, y), (x + 30, y + 180)], fill=ink, width=14)
    return image


def assert_mnist_like(digit: torch.Tensor) -> None:
    assert digit.shape == (28, 28) and digit.dtype == torch.uint8
    border = torch.cat([digit[0], digit[-1], digit[:, 0], digit[:, -1]])
    assert border.float().mean() < 5, "background must be black"
    assert digit.max() > 200, "ink must be light"
    row, col = centre_of_mass(digit)
    assert abs(row - MNIST_CENTRE) <= 0.5 and abs(col - MNIST_CENTRE) <= 0.5
    rows, cols = torch.nonzero(digit > 50, as_tuple=True)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 in (19, 20, 21)


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    weights = image.double()
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    return float((rows * weights).sum() / weights.sum()), float((cols * weights).sum() / weights.sum())


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels, as a decompression bomb does,
    with a few bytes of image data: opening it reads the header, decoding it would not get far."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


WITH_A_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
sys.argv[0] = "mnistlit"
from mnistlit.runs.cli import main
main()
"""


# A test callback that slows validation down and marks it in the working folder (tests/probes.py).
SLOW_VALIDATION = (
    "--trainer.callbacks+",
    "tests.probes.SlowValidation",
    "--trainer.num_sanity_val_steps",
    "0",
)


def runs(workdir: Path) -> list[str]:
    """The run folders under ``workdir/lightning_logs``, sorted."""
    folder = workdir / "lightning_logs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` exists, as long as ``process`` lives."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` as a read-only file system (a read-only bind mount of itself): as root, chmod
    does not stop writes. Skips where mounting is not allowed (not root); CI runs as root."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount {folder}: {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)


def wandb_records(run_file: Path) -> Iterator[Any]:
    """The records of an offline W&B run (``run-ID.wandb``), as ``wandb sync`` reads them: a
    7-byte header, then LevelDB's log format (32 KiB blocks of checksum, length, type, data)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    block, position, pieces = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pieces += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record
        elif kind == 0:
            return
