"""Stops a run whose training loss became NaN or infinite, before it saves those weights."""

from typing import Any

import lightning as L
import torch
from torch import Tensor

from mnistlit.core.errors import MnistlitError
from mnistlit.runs.checkpoints import last_checkpoint_of


class NonFiniteLoss(L.Callback):
    """Raises at the first check after the training loss became nan/inf, naming that step and
    the last good ``last.ckpt``; a checkpoint is never written with such weights.

    Every step's loss is compared on the device, and the first bad step is remembered there, so
    no step waits for the host. The host looks every ``trainer.log_every_n_steps`` steps (when the
    progress bar reads the loss anyway) and before every checkpoint. Lightning's own
    ``detect_anomaly`` finds the operation; this finds the step, at no cost a step.
    """

    def __init__(self) -> None:
        self._first_bad_step: Tensor | None = None
        self._step = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor):
            return
        if self._first_bad_step is None:
            self._first_bad_step = torch.tensor(-1, device=loss.device)
        first = ~torch.isfinite(loss.detach()) & (self._first_bad_step < 0)
        self._first_bad_step = torch.where(first, self._step, self._first_bad_step)
        if batch_idx % trainer.log_every_n_steps == 0:  # type: ignore[attr-defined]  # set by Lightning's connectors at run time
            self._stop_if_seen(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._stop_if_seen(trainer)

    def _stop_if_seen(self, trainer: L.Trainer) -> None:
        if self._first_bad_step is None or (step := int(self._first_bad_step)) < 0:
            return
        saver = last_checkpoint_of(trainer)
        last = (saver.last_model_path if saver is not None else "") or "none was saved yet"
        raise MnistlitError(
            f"the training loss became nan/inf at step {step} (epoch {trainer.current_epoch}); "
            f"stopped without saving these weights. Last good checkpoint: {last}"
        )
