"""A callback the DDP test adds to a real run: which training images each rank saw, per epoch."""

import hashlib
import json
from pathlib import Path

import lightning as L
import torch

from mnistlit.core.inputs import MNIST_MEAN, MNIST_STD


def image_digest(image: torch.Tensor) -> str:
    return hashlib.md5(image.cpu().numpy().tobytes()).hexdigest()


class RecordShards(L.Callback):
    """Writes ``shards/rank{R}-epoch{E}.json``: the MD5 of every training image of that epoch."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.digests: list[str] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        images, _ = batch  # normalised on the device already: undo it to get the stored bytes back
        pixels = ((images[:, 0] * MNIST_STD + MNIST_MEAN) * 255).round().to(torch.uint8)
        self.digests += [image_digest(image) for image in pixels]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = Path("shards")
        folder.mkdir(exist_ok=True)
        path = folder / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps(self.digests))
