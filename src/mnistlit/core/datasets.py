"""MNIST-format datasets: what each one is (files, checksums, mirrors, class names) and the IDX format."""

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mnistlit.core.errors import MnistlitError


@dataclass(frozen=True)
class IDXDataset:
    """An MNIST-format dataset: its folder name, its four files, their MD5s, where to find them.

    Files are stored in ``data_dir/<name>/`` under the names given here. A mirror serves
    each file gzipped: ``<mirror><file>.gz`` is decompressed on arrival, except for a file
    whose name already ends in ``.gz`` (then its MD5 is that of the published archive, and
    it is read through gzip). ``local_dirs`` are folders where a system package may have
    installed the files (gzipped or not); they are tried before any download.
    """

    name: str = "mnist"
    train_images: str = "train-images-idx3-ubyte"
    train_labels: str = "train-labels-idx1-ubyte"
    test_images: str = "t10k-images-idx3-ubyte"
    test_labels: str = "t10k-labels-idx1-ubyte"
    md5: dict[str, str] = field(
        default_factory=lambda: {
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        }
    )
    mirrors: list[str] = field(
        default_factory=lambda: [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ]
    )
    local_dirs: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=lambda: [str(digit) for digit in range(10)])

    def __post_init__(self) -> None:
        missing = [name for name in self.files if name not in self.md5]
        if missing:
            raise MnistlitError(f"dataset {self.name!r}: md5 has no checksum for {', '.join(missing)}")

    @property
    def files(self) -> list[str]:
        """The four file names: train images, train labels, test images, test labels."""
        return [self.train_images, self.train_labels, self.test_images, self.test_labels]


MNIST = IDXDataset()
# Uncompressed MD5s as published beside the archives' (e.g. in torchvision forks); Debian and
# Ubuntu's dataset-fashion-mnist package installs the archives in /usr/share/datasets.
FASHION_MNIST = IDXDataset(
    name="fashion_mnist",
    md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    mirrors=["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    local_dirs=["/usr/share/datasets/fashion-mnist"],
    classes=[
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
)
# Only the archives' MD5s are published for KMNIST, so its files are kept gzipped.
KMNIST = IDXDataset(
    name="kmnist",
    train_images="train-images-idx3-ubyte.gz",
    train_labels="train-labels-idx1-ubyte.gz",
    test_images="t10k-images-idx3-ubyte.gz",
    test_labels="t10k-labels-idx1-ubyte.gz",
    md5={
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
    mirrors=["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
    classes=["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],  # romanised hiragana
)
DATASETS = {dataset.name: dataset for dataset in (MNIST, FASHION_MNIST, KMNIST)}


def dataset_named(name: str) -> IDXDataset:
    if name not in DATASETS:
        raise MnistlitError(
            f"data.dataset {name!r} is not one of {', '.join(DATASETS)} (or give its files and md5)"
        )
    return DATASETS[name]


def read_idx(path: Path) -> torch.Tensor:
    """Decode an IDX file of unsigned bytes (gzipped if its name ends in .gz) into a uint8 tensor."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if data[:3] != b"\x00\x00\x08":
        raise MnistlitError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x0000 08 <ndim>, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
