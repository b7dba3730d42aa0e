"""The progress of a fit as one line per epoch, where the output is not a terminal."""

import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar


class EpochLines(ProgressBar):
    """The progress of a fit as one line per epoch, for output that is not a terminal (CI, nohup,
    a log file), where a bar redrawn with carriage returns would write megabytes of fragments."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._started = 0.0
        self._since_resume = False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed mid-epoch gets no epoch start: its first line counts from the resume.
        self._started, self._since_resume = time.perf_counter(), True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started, self._since_resume = time.perf_counter(), False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        scores = ", ".join(
            f"{name} {float(metrics[name]):.4f}" for name in ("val_loss", "val_acc") if name in metrics
        )
        epochs = "" if trainer.max_epochs in (None, -1) else f"/{trainer.max_epochs - 1}"
        print(
            f"epoch {trainer.current_epoch}{epochs}: step {trainer.global_step}, "
            f"{time.perf_counter() - self._started:.1f} s{' since the resume' if self._since_resume else ''}"
            f"{'; ' + scores if scores else ''}",
            flush=True,
        )
