"""When the model does not know: the probability under which predict and serve call an answer unsure."""

import lightning as L
import torch
from torch import Tensor
from torchmetrics import CatMetric


class UnsureThreshold(L.Callback):
    """Calibrates ``LitClassifier.unsure_below`` on the validation split at every validation: the
    probability that only ``flagged_share`` of the right answers fall under. Every checkpoint
    carries the threshold calibrated with its own weights; ``predict`` and ``serve`` flag an
    answer whose probability is below it as unsure.

    On digits unlike the training set the flag catches most mistakes (docs/handwriting.md has
    the share caught and the share of right answers flagged, measured on low-resolution scans).

    Args:
        flagged_share: the share of right validation answers that get flagged.
    """

    def __init__(self, flagged_share: float = 0.02) -> None:
        if not 0 < flagged_share < 1:
            raise ValueError(f"flagged_share must lie between 0 and 1, not {flagged_share}")
        self.flagged_share = flagged_share
        self.right = CatMetric(nan_strategy="disable")  # under DDP, compute() gathers every process's

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.right = self.right.to(pl_module.device)
        self.right.reset()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not isinstance(outputs, Tensor):  # a module whose validation_step returns no probabilities
            return
        probability, guess = outputs.float().max(dim=1)
        self.right.update(probability[guess == batch[1]])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.right.update_called:
            return
        right = self.right.compute()
        if right.numel() > 0:
            threshold = float(torch.quantile(right.flatten(), self.flagged_share))
            pl_module.unsure_below = threshold  # type: ignore[assignment]  # LitClassifier's attribute, a float
