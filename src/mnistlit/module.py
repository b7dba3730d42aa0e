"""LitClassifier: an injected network, cross-entropy, accuracy per stage, optimizer from config."""

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from mnistlit.nets import Net


class LitClassifier(L.LightningModule):
    """Classifies digits with any network that maps (B, 1, 28, 28) to (B, num_classes) logits.

    Args:
        net: the network; the seed's ``Net`` when not given.
        optimizer: builds the optimizer from the parameters (Adam with its defaults when not given).
        lr_scheduler: builds an epoch-wise LR scheduler from the optimizer, or none.
        num_classes: size of the network's output.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        # Under LightningCLI this records the config (class paths), so load_from_checkpoint
        # rebuilds the injected network. From plain Python a network object would be pickled
        # into every checkpoint, so it is left out and must be passed again when loading.
        self.save_hyperparameters(ignore=["net"] if isinstance(net, nn.Module) else None)
        self.net = (net if net is not None else Net()).to(memory_format=torch.channels_last)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.loss_fn = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.loss_fn(logits, labels)
        self.train_acc.update(logits, labels)
        self.log("loss", loss, prog_bar=True, logger=False)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> None:
        images, labels = batch
        logits = self(images)
        accuracy.update(logits, labels)
        batch_size = len(labels)
        self.log(f"{stage}_loss", self.loss_fn(logits, labels), batch_size=batch_size, prog_bar=True)
        self.log(f"{stage}_acc", accuracy, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, _ = batch
        return self(images).softmax(dim=1)

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
