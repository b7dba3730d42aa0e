"""MNISTDataModule: verified IDX files -> uint8 tensors in memory -> batches cut by indexing."""

import sys
from pathlib import Path
from typing import Protocol

import lightning as L
import torch

from mnistlit.augment import RandomAffine
from mnistlit.batches import InMemoryDigits, ResumableBatches, split_indices
from mnistlit.datasets import IDXDataset, dataset_named, read_idx
from mnistlit.errors import MnistlitError
from mnistlit.images import MAX_IMAGE_PIXELS, image_files, load_digits
from mnistlit.sources import ensure_files

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def unit_range(digits: torch.Tensor) -> torch.Tensor:
    """uint8 digits (B, 28, 28) as float (B, 1, 28, 28) in [0, 1]: what augmentation works on."""
    return digits.unsqueeze(1).float().div_(255)


def standardize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images scaled with MNIST's mean and standard deviation, in the channels_last layout
    every network here is kept in (faster convolutions on CPUs)."""
    return images.sub_(MNIST_MEAN).div_(MNIST_STD).contiguous(memory_format=torch.channels_last)


class DigitData(Protocol):
    """What the callbacks in ``reports.py`` ask of a datamodule; MNISTDataModule provides it.

    A datamodule of another dataset works with every callback when it has these attributes
    and its predict loader answers ``indices_of(batch_idx)`` (see ResumableBatches).
    """

    class_names: list[str]  # the name of each class index, shown in every picture and CSV
    num_classes: int  # len(class_names); the CLI links it to the model and its network
    train_set: InMemoryDigits | None  # after setup("fit"): .images (N, 28, 28) uint8, .labels (N,)
    predict_items: list[str] | None  # what each predicted image is (its file), None for the test set


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
        # Batches are usually cut on the device already; two .to() calls cost next to nothing,
        # Lightning's generic walk over the batch a measurable part of a CPU step.
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
