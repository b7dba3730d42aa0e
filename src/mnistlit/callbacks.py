"""Callbacks the CLI always adds: exact resume, per-epoch history, pictures, predictions."""

import csv
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from matplotlib.figure import Figure

from mnistlit import plots
from mnistlit.errors import MnistlitError

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


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
        if not trainer.fast_dev_run:
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
        state = {"torch": torch.get_rng_state()}
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
        if stage == "fit" and self._training and at_step_end and last is not None:
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
            self.outcome = f"stopped by {name}; {stage.value} did not finish and wrote no results"


class CachedCudaCheck(L.Callback):
    """Lets torch answer "is CUDA available?" from its cached device count while training.

    Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so that the question never
    initialises CUDA before processes are forked. torch asks it in every ``optimizer.step()``
    (``current_accelerator(check_available=True)``), and the NVML route opens the NVML
    library each time: on a CPU machine with torch's CUDA build, Adam's step on a small
    network took 264 µs instead of 128 µs. By ``on_train_start`` every process of the run has
    been launched, so the cached route is safe; the setting is put back when training ends.
    """

    variable = "PYTORCH_NVML_BASED_CUDA_CHECK"

    def __init__(self) -> None:
        self._previous: str | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous = os.environ.get(self.variable)
        os.environ[self.variable] = "0"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous is None:
            os.environ.pop(self.variable, None)
        else:
            os.environ[self.variable] = self._previous

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.on_train_end(trainer, pl_module)


class EpochHistory(L.Callback):
    """One row of epoch metrics per epoch, written to ``history.csv`` in the run folder as
    each epoch ends and printed as a table when fit ends (the seed's ``dfhistory``).
    ``learning_curves.png`` is drawn from the rows when training ends or is stopped: drawing
    it takes ~0.15 s, 1.5% of a base.yaml epoch on a 2-core CPU (TensorBoard is the live view).

    A row is completed when the next epoch starts (or training ends): callbacks see
    ``on_train_epoch_end`` before the LightningModule logs its epoch-level train metrics.
    ``seconds`` is the wall time from one epoch's start to the next one's: training,
    validation, checkpoints and writing the previous row and its plot.

    The rows travel in checkpoints, and so does the epoch in progress: a run resumed
    mid-epoch adds the seconds of the first part to that epoch, and a run resumed from a
    checkpoint taken after an epoch's validation but before its row was complete gets
    that row back. last.ckpt is written after the module logs the epoch's train metrics, so
    its row is whole; a best checkpoint is written at the end of validation, before that,
    so a run started from one shows that epoch's train metrics as NaN.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.path: Path | None = None
        self._pending: dict[str, float] | None = None
        self._trainer: L.Trainer | None = None
        self._started: float | None = None
        self._restored_epoch: dict[str, float] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        current = None
        if self._trainer is not None and self._started is not None:
            metrics = self._trainer.callback_metrics
            current = {name: float(metrics[name]) for name in HISTORY_COLUMNS if name in metrics}
            # An epoch whose row waits for completion (saved at its end) is that epoch, not the next.
            epoch = self._pending["epoch"] if self._pending is not None else self._trainer.current_epoch
            current.update(epoch=epoch, lr=self._lr, seconds=time.perf_counter() - self._started)
        return {"rows": self.rows, "current_epoch": current}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = state_dict["rows"]
        self._restored_epoch = state_dict.get("current_epoch")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self._start_epoch(trainer, now)  # a run resumed mid-epoch gets no epoch start
        restored, self._restored_epoch = self._restored_epoch, None
        if restored is None or any(row["epoch"] == restored["epoch"] for row in self.rows):
            return
        if restored["epoch"] < trainer.current_epoch:  # saved after that epoch's validation
            self.rows.append({name: restored.get(name, float("nan")) for name in HISTORY_COLUMNS})
            self._write(trainer)
        else:  # saved mid-epoch: this epoch's seconds include the part before the stop
            self._started = now - restored["seconds"]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self._complete_row(trainer, now)
        self._start_epoch(trainer, now)

    def _start_epoch(self, trainer: L.Trainer, now: float) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        self._started = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = {"epoch": trainer.current_epoch, "lr": self._lr}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._complete_row(trainer, time.perf_counter())
        self._draw()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._draw()

    def _draw(self) -> None:
        if self.path is not None and self.rows:  # set by _write, on global rank 0 only
            plots.save(plots.learning_curves(self.rows), self.path.with_name("learning_curves.png"))

    def _complete_row(self, trainer: L.Trainer, now: float) -> None:
        if self._pending is None:
            return
        metrics = trainer.callback_metrics
        row = {name: float(metrics[name]) if name in metrics else float("nan") for name in HISTORY_COLUMNS}
        row.update(self._pending, seconds=now - self._started)
        self.rows.append(row)
        self._pending = None
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        log_dir = trainer.log_dir  # under DDP a broadcast from rank 0: every rank must ask
        if log_dir is None or not trainer.is_global_zero:
            return
        self.path = Path(log_dir) / "history.csv"
        partial = self.path.with_name(f".history.csv.{os.getpid()}.partial")
        try:
            with open(partial, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows)
            os.replace(partial, self.path)  # a full disk never leaves half a history behind
        except OSError as e:
            partial.unlink(missing_ok=True)
            reason = f"{e.strerror or e}; the previous one is unchanged"
            raise MnistlitError(f"could not write {self.path}: {reason}") from e

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.rows:
            return
        print()
        print(format_table(self.rows, HISTORY_COLUMNS))
        if self.path is not None:
            print(f"\nhistory: {self.path}")
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            print(f"best checkpoint: {best}")
            print("test it with:    python -m mnistlit test --config <your config> --ckpt_path best")


def format_table(rows: list[dict[str, float]], columns: tuple[str, ...]) -> str:
    def cell(name: str, value: float) -> str:
        if name == "epoch":
            return str(int(value))
        if name == "lr":
            return f"{value:.2e}"
        return f"{value:.1f}" if name == "seconds" else f"{value:.4f}"

    body = [[cell(c, row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


class PredictionCSV(L.Callback):
    """Writes ``predictions.csv`` (item, target, prediction, probability, top3) into the run
    folder, and ``predictions.png``: the first inputs as the network saw them, with predictions.

    ``item`` is the image file when predicting ``--data.predict_dir``, else the test-set index;
    targets and predictions are the dataset's class names (digits for MNIST).
    """

    sheet_size = 100

    def __init__(self, filename: str = "predictions.csv") -> None:
        self.filename = filename
        self.path: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path = (Path(trainer.log_dir or trainer.default_root_dir) / self.filename).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._open("w") as f:
            csv.writer(f).writerow(["item", "target", "prediction", "probability", "top3"])
        self._sheet: list[tuple[torch.Tensor, str]] = []

    def _open(self, mode: str):
        # File names that are not valid UTF-8 reach Python as surrogate escapes; written back
        # the same way, the CSV holds the name's original bytes.
        return open(self.path, mode, newline="", encoding="utf-8", errors="surrogateescape")

    def on_predict_batch_end(
        self, trainer, pl_module, prediction: torch.Tensor, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        items = getattr(trainer.datamodule, "predict_items", None)
        classes = getattr(trainer.datamodule, "class_names", None) or [
            str(c) for c in range(prediction.shape[1])
        ]
        indices = trainer.predict_dataloaders.indices_of(batch_idx).tolist()
        names = [str(items[i]) if items is not None else str(i) for i in indices]
        top_p, top_k = (t.tolist() for t in prediction.topk(min(3, prediction.shape[1]), dim=1))
        targets = ["" if t < 0 else classes[t] for t in batch[1].tolist()]
        with self._open("a") as f:
            csv.writer(f).writerows(
                (
                    name,
                    target,
                    classes[k[0]],
                    f"{p[0]:.6f}",
                    " ".join(f"{classes[c]}:{q:.4f}" for c, q in zip(k, p, strict=True)),
                )
                for name, target, k, p in zip(names, targets, top_k, top_p, strict=True)
            )
        room = self.sheet_size - len(self._sheet)
        for image, name, k, p in list(zip(batch[0], names, top_k, top_p, strict=True))[:room]:
            shown = Path(name).name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:16]
            self._sheet.append((image[0].cpu(), f"{shown}\n-> {classes[k[0]]} ({p[0]:.2f})"))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(f"predictions written to {self.path}")
        if self._sheet and trainer.is_global_zero:
            images = torch.stack([image for image, _ in self._sheet])
            titles = [title for _, title in self._sheet]
            figure = plots.digit_grid(images, titles, columns=min(10, len(titles)))
            plots.save(figure, self.path.with_suffix(".png"))
            print(f"contact sheet: {self.path.with_suffix('.png')}")


class RunPictures(L.Callback):
    """The pictures a user opens first, in TensorBoard and as PNG files in the run folder.

    At fit start: nine training digits with their labels (the seed's grid) and a TensorBoard
    layout that puts train and validation curves in one chart. At the end of fit and test:
    the hyperparameters with the final metrics (TensorBoard's HParams tab). At the end of
    test: the confusion matrix and the most confident mistakes.
    """

    worst_count = 16

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = self._tensorboard(trainer)
        if experiment is not None:
            layout = {
                "train vs val": {
                    "loss": ["Multiline", ["train_loss", "val_loss"]],
                    "accuracy": ["Multiline", ["train_acc", "val_acc"]],
                }
            }
            experiment.add_custom_scalars(layout)
        dataset = getattr(trainer.datamodule, "train_set", None)
        if dataset is not None:
            names = trainer.datamodule.class_names
            titles = [f"label = {names[int(label)]}" for label in dataset.labels[:9]]
            self._publish(trainer, "train_digits", lambda: plots.digit_grid(dataset.images[:9], titles))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score = getattr(trainer.checkpoint_callback, "best_model_score", None)
        if score is not None:
            self._log_hparams(trainer, pl_module, {"hp/best_val_acc": float(score)})

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        classes = len(trainer.datamodule.class_names)
        self._counts = torch.zeros(classes, classes, dtype=torch.long, device=pl_module.device)
        self._worst = (torch.empty(0, device=pl_module.device),) * 4  # confidence, image, label, prediction

    def on_test_batch_end(
        self, trainer, pl_module, outputs: torch.Tensor, batch, batch_idx, dataloader_idx=0
    ):
        images, labels = batch
        confidence, predicted = outputs.max(dim=1)
        classes = self._counts.shape[0]
        self._counts += torch.bincount(labels * classes + predicted, minlength=classes**2).view(classes, -1)
        wrong = predicted != labels
        pool = [
            torch.cat([kept, new[wrong]])
            for kept, new in zip(self._worst, (confidence, images, labels, predicted), strict=True)
        ]
        order = pool[0].argsort(descending=True)[: self.worst_count]
        self._worst = tuple(t[order] for t in pool)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = pl_module.all_gather(self._counts)
        counts = counts.sum(0) if counts.dim() == 3 else counts
        names = trainer.datamodule.class_names
        self._publish(trainer, "confusion_matrix", lambda: plots.confusion_matrix(counts, names))
        confidence, images, labels, predicted = (t.cpu() for t in self._worst)
        titles = [
            f"true {names[int(t)]}, pred {names[int(p)]}\n({c:.2f})"
            for t, p, c in zip(labels, predicted, confidence, strict=True)
        ]
        if titles:
            self._publish(trainer, "misclassified", lambda: plots.digit_grid(images[:, 0], titles, columns=4))
        metrics = {f"hp/{k}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")}
        self._log_hparams(trainer, pl_module, metrics)

    @staticmethod
    def _tensorboard(trainer: L.Trainer):
        return trainer.logger.experiment if isinstance(trainer.logger, TensorBoardLogger) else None

    def _publish(self, trainer: L.Trainer, name: str, draw: Callable[[], Figure]) -> None:
        """Draw the figure (on rank 0 only) into TensorBoard and ``<name>.png`` in the run folder."""
        log_dir = trainer.log_dir  # under DDP a broadcast from rank 0: every rank must ask
        if not trainer.is_global_zero:
            return
        figure = draw()
        experiment = self._tensorboard(trainer)
        if experiment is not None:
            experiment.add_figure(name, figure, global_step=trainer.global_step, close=False)
        if log_dir is not None:
            path = Path(log_dir) / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            plots.save(figure, path)

    @staticmethod
    def _log_hparams(trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float]) -> None:
        if isinstance(trainer.logger, TensorBoardLogger) and metrics:
            trainer.logger.log_hyperparams(pl_module.hparams, metrics)
