"""Ctrl-C and SIGTERM: a stop at a step's end that saves last.ckpt, and one line that says what happened."""

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnistlit.runs.checkpoints import last_checkpoint_of


class RunStopped(BaseException):
    """A stop asked for by a signal (its name is the message): raised at the end of a training
    step after the first Ctrl-C, or by the CLI when SIGTERM arrives before the trainer runs.
    A BaseException, like KeyboardInterrupt: libraries' ``except Exception`` must not swallow it."""


class StopOnSignal(L.Callback):
    """SIGTERM or Ctrl-C while training saves ``last.ckpt`` and stops; at any other moment
    the run stops and says that nothing was saved. ``outcome`` holds that sentence.

    Both take effect at a step boundary, so the saved state is never half an optimizer step:
    the first Ctrl-C at the end of the current step (a second one interrupts at once and
    saves nothing), SIGTERM where Lightning checks for it (after a step, or at an epoch's
    end). A signal that arrives during validation waits until validation is over: a stop
    inside it would lose that epoch's validation result. (ModelCheckpoint's
    ``save_on_exception`` would also save after any error, including a NaN loss.)
    """

    def __init__(self) -> None:
        self.outcome: str | None = None
        self._ctrl_c = False
        self._sigterm_waiting = False
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None
        self._training = False  # between on_train_start and on_train_end: the loop itself runs

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = True
        if threading.current_thread() is not threading.main_thread():
            return
        self._trainer = trainer
        self._previous = {
            signal.SIGINT: signal.signal(signal.SIGINT, self._on_ctrl_c),
            signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_sigterm),
        }

    def _on_ctrl_c(self, signum, frame) -> None:
        signal.signal(signal.SIGINT, self._previous[signal.SIGINT])
        self._ctrl_c = True

    def _on_sigterm(self, signum, frame) -> None:
        if self._trainer is not None and self._trainer.validating:
            self._sigterm_waiting = True
        else:  # Lightning's handler: it stops the other DDP processes too
            self._previous[signal.SIGTERM](signum, frame)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._sigterm_waiting:
            self._sigterm_waiting = False
            self._previous[signal.SIGTERM](signal.SIGTERM, None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self._ctrl_c:
            raise RunStopped("Ctrl-C")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = False
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()
        if isinstance(exception, SIGTERMException):
            name = "SIGTERM"
        elif isinstance(exception, RunStopped):
            name = str(exception)
        elif isinstance(exception, KeyboardInterrupt):
            name = "Ctrl-C"
        else:
            return
        stage = trainer.state.fn
        last = last_checkpoint_of(trainer)
        at_step_end = isinstance(exception, SIGTERMException) or (
            isinstance(exception, RunStopped) and self._ctrl_c
        )
        if stage == "fit" and self._training and at_step_end and last is not None and last.dirpath:
            path = Path(last.dirpath) / "last.ckpt"
            trainer.save_checkpoint(path, weights_only=False)
            self.outcome = (
                f"stopped by {name} at step {trainer.global_step}; saved {path} "
                "(continue it with the same command and --ckpt_path last)"
            )
        elif stage == "fit":
            if not self._training:
                when = "before training started"
            elif trainer.validating:
                when = "during validation (a second Ctrl-C)"
            else:
                when = "in the middle of a step (a second Ctrl-C)"
            saved = Path(last.dirpath) / "last.ckpt" if last is not None and last.dirpath else None
            kept = f"; {saved} holds the last saved state" if saved is not None and saved.is_file() else ""
            self.outcome = f"stopped by {name} {when}; nothing was saved{kept}"
        else:
            what = stage.value if stage is not None else "the run"
            self.outcome = f"stopped by {name}; {what} did not finish and wrote no results"
