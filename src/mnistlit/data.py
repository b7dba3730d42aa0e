"""MNISTDataModule: verified IDX files -> uint8 tensors in memory -> batches cut by indexing."""

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import lightning as L
import torch
from torch.utils.data import Dataset

from mnistlit.augment import RandomAffine
from mnistlit.errors import MnistlitError
from mnistlit.images import MAX_IMAGE_PIXELS, image_files, load_digits
from mnistlit.sources import IDXDataset, dataset_named, ensure_files, read_idx

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def unit_range(digits: torch.Tensor) -> torch.Tensor:
    """uint8 digits (B, 28, 28) as float (B, 1, 28, 28) in [0, 1]: what augmentation works on."""
    return digits.unsqueeze(1).float().div_(255)


def standardize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images scaled with MNIST's mean and standard deviation, in the channels_last layout
    every network here is kept in (faster convolutions on CPUs)."""
    return images.sub_(MNIST_MEAN).div_(MNIST_STD).contiguous(memory_format=torch.channels_last)


class InMemoryDigits(Dataset):
    """Images (N, 28, 28) uint8 and labels (N,) held in memory, on the training device: on a
    GPU the whole dataset (55 MB) is copied there once and batches never cross the bus."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


class ResumableBatches:
    """Batches cut from an in-memory dataset by indexing, in an order that can be saved.

    Epoch ``e`` (asked of ``current_epoch`` when a pass starts: the trainer's epoch) visits a
    permutation drawn from ``seed + e``, or the natural order, so the loader's whole position
    is three numbers: the seed, the epoch and the batches already served. Lightning saves
    ``state_dict()`` in every checkpoint and hands it back to ``load_state_dict()`` when it
    resumes mid-epoch; that epoch then continues after the last batch trained. Any other pass
    starts at its epoch's first batch, so a resume from an epoch's end (where Lightning does
    not restore loader states) still gets the next epoch's order.

    Under DDP each rank takes every ``world_size``-th index of the same permutation. Training
    shards are padded with the permutation's first indices to equal length (as
    DistributedSampler does) so that all ranks step together; evaluation shards are not, so
    every image is scored exactly once.
    """

    def __init__(
        self,
        dataset: InMemoryDigits,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        current_epoch: Callable[[], int] = lambda: 0,
    ) -> None:
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.rank, self.world_size, self.current_epoch = rank, world_size, current_epoch
        self.epoch, self.served = 0, 0
        self._resuming = False
        self._indices = torch.empty(0, dtype=torch.long)  # the current pass's shard

    def shard(self, epoch: int) -> torch.Tensor:
        """The dataset indices this rank visits in ``epoch``, in order."""
        total = len(self.dataset)
        if not self.shuffle:
            return torch.arange(self.rank, total, self.world_size)
        order = torch.randperm(total, generator=torch.Generator().manual_seed(self.seed + epoch))
        padded = math.ceil(total / self.world_size) * self.world_size
        order = torch.cat([order, order[: padded - total]])
        return order[self.rank :: self.world_size]

    def indices_of(self, batch_idx: int) -> torch.Tensor:
        """The dataset indices in batch ``batch_idx`` of the current pass."""
        start = batch_idx * self.batch_size
        return self._indices[start : start + self.batch_size]

    def __len__(self) -> int:
        total = len(self.dataset)
        shard = (
            math.ceil(total / self.world_size)
            if self.shuffle
            else len(range(self.rank, total, self.world_size))
        )
        return math.ceil(shard / self.batch_size)

    def __iter__(self):
        # A generator: nothing happens until the first batch is asked for, by then the trainer
        # has set its epoch (Lightning also calls iter() once only to check it is iterable).
        epoch = self.current_epoch()
        if not (self._resuming and self.epoch == epoch):
            self.epoch, self.served = epoch, 0
        self._resuming = False
        self._indices = self.shard(self.epoch).to(self.dataset.images.device)
        batches = len(self)
        while self.served < batches:
            batch_idx = self.served
            self.served += 1  # counted before the step runs: a checkpoint then points past it
            yield self.dataset[self.indices_of(batch_idx)]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.served = state["seed"], state["epoch"], state["served"]
        self._resuming = True


class DigitData(Protocol):
    """What the callbacks in ``reports.py`` ask of a datamodule; MNISTDataModule provides it.

    A datamodule of another dataset works with every callback when it has these attributes
    and its predict loader answers ``indices_of(batch_idx)`` (see ResumableBatches).
    """

    class_names: list[str]  # the name of each class index, shown in every picture and CSV
    num_classes: int  # len(class_names); the CLI links it to the model and its network
    train_set: InMemoryDigits | None  # after setup("fit"): .images (N, 28, 28) uint8, .labels (N,)
    predict_items: list[str] | None  # what each predicted image is (its file), None for the test set


def split_indices(total: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(total)`` into (train, validation) indices."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


class MNISTDataModule(L.LightningDataModule):
    """MNIST (or any MNIST-format dataset) for training, validation, test and prediction.

    Args:
        data_dir: folder that holds (or will hold) ``<dataset.name>/`` with the four IDX files.
        batch_size: images per batch, for every stage.
        val_size: images held out of the official training set for validation.
        split_seed: seed of the train/validation split, independent of the training seed.
        dataset: ``mnist``, ``fashion_mnist`` or ``kmnist``, or any MNIST-format dataset
            given by its file names, checksums, mirrors and class names. All are scaled with
            MNIST's mean and standard deviation.
        predict_dir: images to predict instead of the test set: a folder (PNG, JPEG, BMP,
            GIF, TIFF, WebP), one file, or a glob pattern. Each is turned into an MNIST-like
            digit first.
        max_image_pixels: images with more pixels are skipped before they are decoded.
        augment: a random transform of training batches on the device (e.g. RandomAffine);
            validation, test and prediction batches are never augmented.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 42,
        dataset: str | IDXDataset = "mnist",
        predict_dir: str | None = None,
        augment: RandomAffine | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise MnistlitError(f"data.batch_size must be at least 1, got {batch_size}")
        if val_size < 1:
            raise MnistlitError(f"data.val_size must be at least 1, got {val_size}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.dataset = dataset_named(dataset) if isinstance(dataset, str) else dataset
        self.predict_dir = predict_dir
        self.augment = augment
        self.max_image_pixels = max_image_pixels
        self.class_names = list(self.dataset.classes)
        self.num_classes = len(self.class_names)
        self.predict_items: list[str] | None = None
        self.train_set: InMemoryDigits | None = None

    def prepare_data(self) -> None:
        if self.trainer is not None and self.trainer.predicting and self.predict_dir is not None:
            return  # predicting the user's own images needs no dataset
        ensure_files(self.dataset, self.data_dir)

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        folder = self.data_dir / self.dataset.name
        train_images, train_labels, test_images, test_labels = (folder / name for name in self.dataset.files)
        if stage in ("fit", "validate"):
            images, labels = read_idx(train_images), read_idx(train_labels).long()
            if self.val_size >= len(labels):
                raise MnistlitError(
                    f"data.val_size={self.val_size} leaves no training images (the set has {len(labels)})"
                )
            train, val = split_indices(len(labels), self.val_size, self.split_seed)
            if self.batch_size > len(train):
                raise MnistlitError(
                    f"data.batch_size={self.batch_size} is larger than the {len(train)} training images"
                )
            self.train_set = InMemoryDigits(images[train].to(device), labels[train].to(device))
            self.val_set = InMemoryDigits(images[val].to(device), labels[val].to(device))
        if stage == "predict" and self.predict_dir is not None:
            self.predict_set = self._images_to_predict()
        elif stage in ("test", "predict"):
            self.test_set = InMemoryDigits(
                read_idx(test_images).to(device), read_idx(test_labels).long().to(device)
            )
            self.predict_set = self.test_set

    def _loader(self, dataset: InMemoryDigits, shuffle: bool = False) -> ResumableBatches:
        if self.trainer is None:
            return ResumableBatches(dataset, self.batch_size, shuffle, seed=torch.initial_seed())
        # The shuffling seed must be the same on every rank for the shards to be disjoint.
        seed = self.trainer.strategy.broadcast(torch.initial_seed(), src=0)
        trainer = self.trainer
        return ResumableBatches(
            dataset, self.batch_size, shuffle, seed, trainer.global_rank, trainer.world_size,
            current_epoch=lambda: trainer.current_epoch,
        )  # fmt: skip

    def train_dataloader(self) -> ResumableBatches:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> ResumableBatches:
        return self._loader(self.val_set)

    def test_dataloader(self) -> ResumableBatches:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> ResumableBatches:
        return self._loader(self.predict_set)

    def _images_to_predict(self) -> InMemoryDigits:
        files = image_files(self.predict_dir)
        images, used, skipped = load_digits(files, self.max_image_pixels)
        for file, reason in skipped:
            print(f"mnistlit: skipped {file}: {reason}", file=sys.stderr)
        if not used:
            raise MnistlitError(f"data.predict_dir {self.predict_dir}: no images that could be read")
        self.predict_items = [str(file) for file in used]
        return InMemoryDigits(images, torch.full((len(used),), -1))

    def transfer_batch_to_device(
        self, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, dataloader_idx: int
    ):
        # Batches are usually cut on the device already; Lightning's generic walk over the
        # batch costs ~0.2 ms a step on a CPU, two .to() calls next to nothing.
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        """Turn uint8 (B, 28, 28) into normalised (B, 1, 28, 28) on the training device, in the
        network's dtype (float32 unless the precision is ``16-true``, ``bf16-true`` or ``64-true``)."""
        images, labels = batch
        images = unit_range(images)
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            images = self.augment(images)
        images = standardize(images)
        if self.trainer is not None and self.trainer.lightning_module.dtype != images.dtype:
            images = images.to(self.trainer.lightning_module.dtype)
        return images, labels
