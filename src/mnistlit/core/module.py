"""LitClassifier: an injected network, cross-entropy, loss and accuracy per stage, optimizer from config."""

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters  # private: see pyproject
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnistlit.core import schedules
from mnistlit.core.errors import MnistlitError
from mnistlit.core.nets import Net


class StageMetrics(nn.Module):
    """Sample-weighted mean loss and accuracy of one stage, accumulated on the device."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        # "disable": no NaN check, which would read the loss back to the host every step.
        self.loss = MeanMetric(nan_strategy="disable")
        self.acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)

    def update(self, sample_losses: Tensor, logits: Tensor, labels: Tensor) -> None:
        self.loss.update(sample_losses)
        self.acc.update(logits, labels)

    def reset(self) -> None:
        self.loss.reset()
        self.acc.reset()

    def sums(self) -> dict[str, dict[str, Tensor | list[Tensor]]]:
        """What has been summed since the last reset (torchmetrics keeps it out of ``state_dict``)."""
        return {"loss": dict(self.loss.metric_state), "acc": dict(self.acc.metric_state)}

    def add(self, sums: dict[str, dict[str, Tensor]]) -> None:  # the states here are tensors, no lists
        """Add sums taken with ``sums()``, e.g. from a checkpoint."""
        for name, metric in (("loss", self.loss), ("acc", self.acc)):
            metric.merge_state({state: value.to(metric.device) for state, value in sums[name].items()})


class LitClassifier(L.LightningModule):
    """Classifies digits with any network that maps (B, 1, 28, 28) to (B, num_classes) logits.

    Metrics are updated every step and logged once per epoch as ``{stage}_loss`` and
    ``{stage}_acc``: each ``self.log`` call costs Lightning a deep copy of its bookkeeping,
    a few percent of a step on a CPU (docs/speed.md). The progress bar shows the step loss
    every ``trainer.log_every_n_steps`` steps.

    Args:
        net: the network; the seed's ``Net`` when not given.
        optimizer: builds the optimizer from the parameters (Adam with its defaults when not given).
        lr_scheduler: builds an LR scheduler from the optimizer, or none.
        lr_scheduler_interval: ``epoch`` to step the scheduler after every epoch, ``step``
            after every optimizer step (OneCycleLR).
        compile: compile the network with ``torch.compile`` (checkpoints stay compatible).
        num_classes: size of the network's output.
    """

    logged_metrics = ("train_loss", "train_acc", "val_loss", "val_acc")  # what callbacks may monitor

    def __init__(
        self,
        net: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        num_classes: int = 10,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # Under LightningCLI the hyperparameters are the config (class paths and init args, the
        # network's too), so load_from_checkpoint rebuilds the right network from the file alone.
        # From plain Python the network, optimizer and scheduler are objects, which would be
        # pickled into every checkpoint (and refused by a weights_only load): they are left out,
        # and a network other than the default must be passed again when loading.
        from_config = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=None if from_config else ["net", "optimizer", "lr_scheduler"])
        self.net = (net if net is not None else Net()).to(memory_format=torch.channels_last)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.compile_net = compile
        self.loss_fn = nn.CrossEntropyLoss(reduction="none")
        self.train_metrics = StageMetrics(num_classes)
        self.val_metrics = StageMetrics(num_classes)
        self.test_metrics = StageMetrics(num_classes)
        # Answers less probable than this are unsure: calibrated on the validation split during
        # fit (mnistlit.runs.unsure), kept in every checkpoint; None before that.
        self.unsure_below: float | None = None

    def configure_model(self) -> None:
        if self.compile_net:
            self.net.compile()  # in place: state_dict keys do not change

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def _step(self, batch: tuple[Tensor, Tensor], metrics: StageMetrics) -> Tensor:
        images, labels = batch
        logits = self(images)
        sample_losses = self.loss_fn(logits, labels)
        metrics.update(sample_losses.detach(), logits.detach(), labels)
        return sample_losses.mean()

    def _log_epoch(self, stage: str, metrics: StageMetrics) -> None:
        self.log(f"{stage}_loss", metrics.loss, prog_bar=True)
        self.log(f"{stage}_acc", metrics.acc, prog_bar=True)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, self.train_metrics)
        if batch_idx % self.trainer.log_every_n_steps == 0:  # type: ignore[attr-defined]  # set by Lightning's connectors at run time
            self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def on_train_epoch_start(self) -> None:
        self.train_metrics.reset()  # Lightning skips this hook when a run resumes mid-epoch

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train", self.train_metrics)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The epoch's training sums so far, so that a run stopped mid-epoch and resumed reports
        # that epoch's train_loss and train_acc over all its steps, not only those after the resume.
        checkpoint["train_metric_sums"] = self.train_metrics.sums()
        checkpoint["unsure_below"] = self.unsure_below

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.unsure_below = checkpoint.get("unsure_below")
        # Under DDP a checkpoint holds rank 0's sums only: added once, the resumed epoch's numbers
        # cover rank 0's steps before the stop and every process's after it.
        if "train_metric_sums" in checkpoint and self.global_rank == 0:
            self.train_metrics.add(checkpoint["train_metric_sums"])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        self.val_metrics.update(self.loss_fn(logits, labels), logits, labels)
        return logits.softmax(dim=1)  # for the calibration of unsure answers (UnsureThreshold)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        self.test_metrics.update(self.loss_fn(logits, labels), logits, labels)
        return logits.softmax(dim=1)  # for the confusion matrix and the mistakes (RunPictures)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_metrics)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, _ = batch
        return self(images).softmax(dim=1)

    def configure_optimizers(self):
        try:
            optimizer = self.optimizer(self.parameters())
        except (ValueError, TypeError) as e:
            raise MnistlitError(f"model.optimizer: {e}") from e
        if self.lr_scheduler is None:
            return optimizer
        length = schedules.run_length(self.trainer, self.lr_scheduler_interval)
        scheduler = schedules.build(self.lr_scheduler, optimizer, self.optimizer, length)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }

    def on_train_start(self) -> None:
        schedules.check_resumed(self.trainer, self.lr_scheduler_interval)
