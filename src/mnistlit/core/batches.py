"""Batches cut by indexing from digits held in memory, in an order a checkpoint can save and resume."""

import math
from collections.abc import Callable

import torch
from torch.utils.data import Dataset


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


def split_indices(total: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(total)`` into (train, validation) indices."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]
