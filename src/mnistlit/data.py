"""MNISTDataModule: verified IDX files -> uint8 tensors in memory -> batches cut by indexing."""

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision.datasets.mnist import read_image_file, read_label_file

from mnistlit.errors import MnistlitError
from mnistlit.images import image_files, load_digits
from mnistlit.sources import MNIST, IDXDataset, ensure_files

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class InMemoryDigits(Dataset):
    """Images (N, 28, 28) uint8 and labels (N,) held in memory, on the training device: on a
    GPU the whole dataset (55 MB) is copied there once and batches never cross the bus.

    ``__getitems__`` lets the DataLoader fetch a whole batch with one indexing operation
    instead of collating images one at a time; the samplers (and Lightning's
    DistributedSampler under DDP) still decide which indices a batch holds.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, device=self.images.device)
        return self.images[index], self.labels[index]


def split_indices(total: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(total)`` into (train, validation) indices."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


def already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


class MNISTDataModule(L.LightningDataModule):
    """MNIST (or any MNIST-format dataset) for training, validation, test and prediction.

    Args:
        data_dir: folder that holds (or will hold) ``<dataset.name>/`` with the four IDX files.
        batch_size: images per batch, for every stage.
        val_size: images held out of the official training set for validation.
        split_seed: seed of the train/validation split, independent of the training seed.
        dataset: file names, checksums and mirrors; MNIST by default.
        predict_dir: images to predict instead of the test set: a folder (PNG, JPEG, BMP,
            GIF) or a glob pattern. Each is turned into an MNIST-like digit first.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 42,
        dataset: IDXDataset = MNIST,
        predict_dir: str | None = None,
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
        self.dataset = dataset
        self.predict_dir = predict_dir
        self.class_names = [str(digit) for digit in range(10)]
        self.predict_items: list[str] | None = None

    def prepare_data(self) -> None:
        if self.trainer is not None and self.trainer.predicting and self.predict_dir is not None:
            return  # predicting the user's own images needs no dataset
        ensure_files(self.dataset, self.data_dir)

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        folder = self.data_dir / self.dataset.name
        train_images, train_labels, test_images, test_labels = (folder / name for name in self.dataset.files)
        if stage in ("fit", "validate"):
            images, labels = read_image_file(str(train_images)), read_label_file(str(train_labels))
            if self.val_size >= len(labels):
                raise MnistlitError(
                    f"data.val_size={self.val_size} leaves no training images (the set has {len(labels)})"
                )
            train, val = split_indices(len(labels), self.val_size, self.split_seed)
            self.train_set = InMemoryDigits(images[train].to(device), labels[train].to(device))
            self.val_set = InMemoryDigits(images[val].to(device), labels[val].to(device))
        if stage == "predict" and self.predict_dir is not None:
            self.predict_set = self._images_to_predict()
        elif stage in ("test", "predict"):
            self.test_set = InMemoryDigits(
                read_image_file(str(test_images)).to(device), read_label_file(str(test_labels)).to(device)
            )
            self.predict_set = self.test_set

    def _loader(self, dataset: InMemoryDigits, shuffle: bool) -> StatefulDataLoader:
        # StatefulDataLoader: its position within the epoch goes into every checkpoint, so a
        # run killed mid-epoch resumes at the next batch. No worker processes: batches are
        # slices of tensors already in memory, workers would only add inter-process copies.
        return StatefulDataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, collate_fn=already_batched
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.predict_set, shuffle=False)

    def _images_to_predict(self) -> InMemoryDigits:
        files = image_files(self.predict_dir)
        images, used, skipped = load_digits(files)
        for file, reason in skipped:
            print(f"mnistlit: skipped {file}: {reason}", file=sys.stderr)
        if not used:
            raise MnistlitError(f"data.predict_dir {self.predict_dir}: no images that could be read")
        self.predict_items = [str(file) for file in used]
        return InMemoryDigits(images, torch.full((len(used),), -1))

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        """Turn uint8 (B, 28, 28) into normalised float (B, 1, 28, 28) on the training device."""
        images, labels = batch
        images = images.unsqueeze(1).float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD)
        return images.contiguous(memory_format=torch.channels_last), labels
