"""Checkpointing and stopping: last.ckpt, what an exact resume needs, SIGTERM and Ctrl-C."""

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class LastCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt``: every ``every_n_train_steps`` steps, so a crash loses at most that
    many (the data loader's position is in the checkpoint, so it resumes mid-epoch), at the
    end of every epoch, and when training ends.

    The best-by-val_acc ModelCheckpoint keeps the best weights; this one keeps the latest
    state. (Lightning 2.6's own ``save_last`` rewrites last.ckpt at an epoch's end only when
    that epoch also saved a best checkpoint, so a finished run's last.ckpt could be steps
    behind its final weights.) Saving at ``on_train_epoch_end`` also puts it after the best
    checkpoint's save, so the best path recorded in last.ckpt is current.
    """

    def __init__(self, every_n_train_steps: int = 100) -> None:
        super().__init__(
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,  # always last.ckpt, never last-v1.ckpt
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Again at the same step: the callbacks' states are final now (the history's last row).
        if not trainer.fast_dev_run:  # type: ignore[attr-defined]  # set by Lightning's connectors at run time
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def last_checkpoint_of(trainer: L.Trainer) -> "LastCheckpoint | None":
    """The callback that owns this run's ``last.ckpt``.

    Not ``trainer.checkpoint_callback``: that is the first ModelCheckpoint, the best-by-val_acc one.
    """
    return next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), None)


class ExactResume(L.Callback):
    """Saves the global RNG states with every checkpoint and puts them back when training
    restarts: dropout draws from them, and Lightning does not save them."""

    def __init__(self) -> None:
        self._restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored is None:
            return
        torch.set_rng_state(self._restored["torch"])
        if "cuda" in self._restored and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._restored["cuda"])
        self._restored = None


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
