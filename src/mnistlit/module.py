"""LitClassifier: an injected network, cross-entropy, loss and accuracy per stage, optimizer from config."""

import functools
import math
import warnings
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters  # private: see pyproject
from PIL import Image
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnistlit.data import standardize, unit_range
from mnistlit.errors import MnistlitError, one_line
from mnistlit.images import preprocess_image
from mnistlit.nets import Net
from mnistlit.resume import last_checkpoint_of


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


class LitClassifier(L.LightningModule):
    """Classifies digits with any network that maps (B, 1, 28, 28) to (B, num_classes) logits.

    Metrics are updated every step and logged once per epoch as ``{stage}_loss`` and
    ``{stage}_acc``: each ``self.log`` call costs Lightning a deep copy of its bookkeeping,
    a few percent of a step on a CPU (README, Speed). The progress bar shows the step loss every
    ``trainer.log_every_n_steps`` steps, which is also when a non-finite loss is looked
    for (and before every checkpoint): the first bad step is remembered on the device, so
    no step waits for the host.

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
        # From plain Python a network object would be pickled into every checkpoint: it is left
        # out, and must be passed again when loading.
        from_config = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=["net"] if isinstance(net, nn.Module) and not from_config else None)
        self.net = (net if net is not None else Net()).to(memory_format=torch.channels_last)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.compile = compile
        self.loss_fn = nn.CrossEntropyLoss(reduction="none")
        self.train_metrics = StageMetrics(num_classes)
        self.val_metrics = StageMetrics(num_classes)
        self.test_metrics = StageMetrics(num_classes)
        self._first_nonfinite_step: Tensor | None = None

    def check_monitors(self, callbacks: list[L.Callback]) -> None:
        """Every metric a callback monitors must be one this module logs (else it fails after an epoch)."""
        for callback in callbacks:
            monitor = getattr(callback, "monitor", None)
            known = (None, *self.logged_metrics)
            if isinstance(callback, EarlyStopping | ModelCheckpoint) and monitor not in known:
                kind = "early stopping" if isinstance(callback, EarlyStopping) else "checkpoint"
                raise MnistlitError(
                    f"{kind} monitors {monitor!r}, which the model never logs; "
                    f"choose one of {', '.join(self.logged_metrics)}"
                )

    def configure_model(self) -> None:
        if self.compile:
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
        self._remember_nonfinite(loss)
        if batch_idx % self.trainer.log_every_n_steps == 0:
            self._stop_if_nonfinite()
            self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def _remember_nonfinite(self, loss: Tensor) -> None:
        if self._first_nonfinite_step is None:
            self._first_nonfinite_step = torch.tensor(-1, device=loss.device)
        first = ~torch.isfinite(loss.detach()) & (self._first_nonfinite_step < 0)
        self._first_nonfinite_step = torch.where(first, self.global_step, self._first_nonfinite_step)

    def _stop_if_nonfinite(self) -> None:
        if self._first_nonfinite_step is None or (step := int(self._first_nonfinite_step)) < 0:
            return
        saver = last_checkpoint_of(self.trainer)
        last = (saver.last_model_path if saver is not None else "") or "none was saved yet"
        raise MnistlitError(
            f"the training loss became nan/inf at step {step} (epoch {self.current_epoch}); "
            f"stopped without saving these weights. Last good checkpoint: {last}"
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._stop_if_nonfinite()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train", self.train_metrics)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, self.val_metrics)

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

    @torch.inference_mode()
    def classify(self, image: Image.Image) -> tuple[int, float]:
        """The digit in a PIL image (a photo or scan of handwriting) and its probability."""
        images = standardize(unit_range(preprocess_image(image)[None].to(self.device)))
        self.eval()
        probability, predicted = self(images.to(self.dtype)).softmax(1).max(1)
        return int(predicted), float(probability)

    def configure_optimizers(self):
        try:
            optimizer = self.optimizer(self.parameters())
        except (ValueError, TypeError) as e:
            raise MnistlitError(f"model.optimizer: {e}") from e
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self._scheduler_for(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }

    def _scheduler_for(self, optimizer: torch.optim.Optimizer):
        """The configured scheduler, with a one-cycle length that follows the run when the config
        gives none; first run once through the whole run on a throwaway optimizer, so that a
        schedule that cannot last the run (``T_max: 0``, too few one-cycle steps) is one line
        now instead of a traceback hours in."""
        build = self.lr_scheduler
        length = self._scheduler_steps()
        keywords = getattr(build, "keywords", {})
        if "total_steps" in keywords and keywords["total_steps"] is None and keywords.get("epochs") is None:
            if length is None:
                raise MnistlitError(
                    "model.lr_scheduler needs a length: set trainer.max_epochs or trainer.max_steps, "
                    "or the scheduler's total_steps"
                )
            build = functools.partial(build, total_steps=max(1, length))
        name = "the scheduler"
        rehearsal = self.optimizer([torch.zeros(1, requires_grad=True)])
        step = 0
        try:
            rehearsed = build(rehearsal)
            name = type(rehearsed).__name__
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
                while step < (length or 0):
                    step += 1
                    rehearsed.step()
            return build(optimizer)
        except (ValueError, TypeError, ArithmeticError) as e:
            at = f" at step {step} of {length}" if step else ""
            raise MnistlitError(f"model.lr_scheduler: {name} fails{at}: {one_line(e)}") from e

    def _scheduler_steps(self) -> int | None:
        """How often this run steps the scheduler (per epoch or per optimizer step); None if unbounded.

        Counted from the datamodule's training loader, not ``trainer.estimated_stepping_batches``,
        which rebuilds the trainer's loader and so drops its restored position (Lightning #20550).
        """
        trainer = self._trainer
        if trainer is None:
            return None
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        if self.lr_scheduler_interval == "epoch":
            return epochs
        datamodule = trainer.datamodule
        per_epoch = (
            math.ceil(len(datamodule.train_dataloader()) / trainer.accumulate_grad_batches)
            if datamodule is not None
            else None
        )
        limits = [trainer.max_steps] if trainer.max_steps > 0 else []
        if epochs is not None and per_epoch is not None:
            limits.append(epochs * per_epoch)
        return min(limits) if limits else None

    def on_train_start(self) -> None:
        # A resumed run gets its scheduler back from the checkpoint, with the length it had then.
        steps = self._scheduler_steps()
        for config in self.trainer.lr_scheduler_configs:
            total = getattr(config.scheduler, "total_steps", None)
            if total is not None and steps is not None and total < steps:
                raise MnistlitError(
                    f"the checkpoint's {type(config.scheduler).__name__} lasts {total} steps but this run "
                    f"needs {steps}: resume with the max_epochs it was started with, or start a new run"
                )
