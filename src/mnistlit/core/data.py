"""MNISTDataModule: IDX files -> uint8 tensors in memory -> batches cut by indexing.

This one reads files that are already in ``data_dir``. ``mnistlit.MNISTDataModule`` (runs/data.py)
adds what a tool needs around it: fetching and verifying the files, and predicting image files.
"""

from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import lightning as L
import torch
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters  # private: see pyproject

from mnistlit.core.augment import RandomAffine
from mnistlit.core.batches import InMemoryDigits, ResumableBatches, split_indices
from mnistlit.core.datasets import IDXDataset, dataset_named, read_idx
from mnistlit.core.errors import MnistlitError
from mnistlit.core.inputs import standardize, unit_range


class DigitData(Protocol):
    """What mnistlit's callbacks (history, pictures, predictions) ask of a datamodule.

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
        augment: RandomAffine | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise MnistlitError(f"data.batch_size must be at least 1, got {batch_size}")
        if val_size < 1:
            raise MnistlitError(f"data.val_size must be at least 1, got {val_size}")
        # Under LightningCLI the hyperparameters are the config. From plain Python the dataset and
        # the augmentation are objects, which a weights_only load refuses: the dataset is kept as
        # plain data (checkpoints compare it on resume), the augmentation is left out.
        from_config = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=None if from_config else ["augment"])
        if not from_config and isinstance(dataset, IDXDataset):
            self.hparams["dataset"] = asdict(dataset)
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.dataset = dataset_named(dataset) if isinstance(dataset, str) else dataset
        self.augment = augment
        self.class_names = list(self.dataset.classes)
        self.num_classes = len(self.class_names)
        self.predict_items: list[str] | None = None
        self.train_set: InMemoryDigits | None = None
        self.shuffle_seed: int | None = None  # saved in checkpoints, so a resumed run keeps its orders

    def prepare_data(self) -> None:
        missing = [name for name in self.dataset.files if not (self.folder / name).is_file()]
        if missing:
            raise MnistlitError(
                f"{self.folder} lacks {', '.join(missing)}: put the dataset's files there "
                "(mnistlit.MNISTDataModule fetches and verifies them)"
            )

    @property
    def folder(self) -> Path:
        """Where the dataset's four files are: ``data_dir/<dataset name>``."""
        return self.data_dir / self.dataset.name

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        train_images, train_labels, test_images, test_labels = (
            self.folder / name for name in self.dataset.files
        )
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
        if stage in ("test", "predict"):
            self.test_set = InMemoryDigits(
                read_idx(test_images).to(device), read_idx(test_labels).long().to(device)
            )
            self.predict_set = self.test_set

    def _loader(self, dataset: InMemoryDigits, shuffle: bool = False) -> ResumableBatches:
        if self.trainer is None:
            return ResumableBatches(dataset, self.batch_size, shuffle, seed=self._shuffle_seed())
        # The shuffling seed must be the same on every rank for the shards to be disjoint.
        seed = self.trainer.strategy.broadcast(self._shuffle_seed(), src=0)
        trainer = self.trainer
        return ResumableBatches(
            dataset, self.batch_size, shuffle, seed, trainer.global_rank, trainer.world_size,
            current_epoch=lambda: trainer.current_epoch,
        )  # fmt: skip

    def _shuffle_seed(self) -> int:
        """The run's seed of the epochs' orders: the process's torch seed, or a resumed run's own."""
        if self.shuffle_seed is None:
            self.shuffle_seed = torch.initial_seed()
        return self.shuffle_seed

    def state_dict(self) -> dict[str, int | None]:
        return {"shuffle_seed": self.shuffle_seed}

    def load_state_dict(self, state_dict: dict[str, int | None]) -> None:
        self.shuffle_seed = state_dict.get("shuffle_seed")

    def train_dataloader(self) -> ResumableBatches:
        assert self.train_set is not None, "setup('fit') makes the training set"
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> ResumableBatches:
        return self._loader(self.val_set)

    def test_dataloader(self) -> ResumableBatches:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> ResumableBatches:
        return self._loader(self.predict_set)

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
