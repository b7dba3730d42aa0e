"""The epoch history of a fit: history.csv and learning_curves.png in the run folder, the table
fit prints, and the curves redrawn live in a notebook."""

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L

from mnistlit.core.errors import MnistlitError
from mnistlit.files import atomic_write
from mnistlit.runs import plots
from mnistlit.runs.folders import run_folder

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


class EpochHistory(L.Callback):
    """One row of epoch metrics per epoch, written to ``history.csv`` in the run folder as
    each epoch ends and printed as a table when fit ends (the seed's ``dfhistory``).
    ``learning_curves.png`` is drawn from the rows when training ends or is stopped: drawing
    it every epoch cost more than the steps it interrupted (docs/speed.md; TensorBoard is the
    live view).

    A row is completed when the next epoch starts (or training ends): callbacks see
    ``on_train_epoch_end`` before the LightningModule logs its epoch-level train metrics.
    ``seconds`` is the wall time from one epoch's start to the next one's: training,
    validation, checkpoints and writing the previous row and its plot. ``lr`` is the rate of
    the epoch's last optimizer step: for a schedule stepped every epoch, the epoch's rate; for a
    one-cycle schedule stepped every batch, where the epoch ended (the last row: where the run
    ended).

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
            self._write(trainer, self.rows)
        else:  # saved mid-epoch: this epoch's seconds include the part before the stop
            self._started = now - restored["seconds"]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self._complete_row(trainer, now)
        self._start_epoch(trainer, now)

    def _start_epoch(self, trainer: L.Trainer, now: float) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        self._started = now

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = {"epoch": trainer.current_epoch, "lr": self._lr}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._complete_row(trainer, time.perf_counter())
        self._draw(self.rows)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        rows = self.rows
        if self._pending is not None:
            # Stopped after an epoch's end and before the next one's start (where Lightning acts
            # on a SIGTERM that came during the epoch's last validation): its row is whole. The
            # file gets it now; the state keeps it pending, so a resumed run completes it once.
            rows = [*self.rows, self._row(trainer, time.perf_counter())]
            self._write(trainer, rows)
        self._draw(rows)

    def _draw(self, rows: list[dict[str, float]]) -> None:
        if self.path is not None and rows:  # set by _write, on global rank 0 only
            plots.save(plots.learning_curves(rows), self.path.with_name("learning_curves.png"))

    def _row(self, trainer: L.Trainer, now: float) -> dict[str, float]:
        assert self._pending is not None
        metrics = trainer.callback_metrics
        row = {name: float(metrics[name]) if name in metrics else float("nan") for name in HISTORY_COLUMNS}
        row.update(self._pending, seconds=now - (self._started if self._started is not None else now))
        return row

    def _complete_row(self, trainer: L.Trainer, now: float) -> None:
        if self._pending is None:
            return
        self.rows.append(self._row(trainer, now))
        self._pending = None
        self._write(trainer, self.rows)

    def _write(self, trainer: L.Trainer, rows: list[dict[str, float]]) -> None:
        folder = run_folder(trainer)
        if folder is None:
            return
        self.path = folder / "history.csv"
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        try:
            atomic_write(self.path, table.getvalue().encode())  # never half a history, even on a full disk
        except OSError as e:
            reason = f"{e.strerror or e}; the previous one is unchanged"
            raise MnistlitError(f"could not write {self.path}: {reason}") from e


def recorder(trainer: L.Trainer) -> EpochHistory | None:
    """The trainer's EpochHistory, unless it was switched off."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's connectors
    return next((c for c in callbacks if isinstance(c, EpochHistory)), None)


class LiveCurves(L.Callback):
    """Inside a Jupyter kernel, the learning curves below the running cell, redrawn each time an
    epoch's row is complete (a notebook's TensorBoard). Once per epoch, so no step pays for it
    (docs/tracking.md); outside Jupyter it does nothing."""

    def __init__(self) -> None:
        self._shown: Any = None  # the cell output's display handle, once there is a curve to show

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer)

    def _draw(self, trainer: L.Trainer) -> None:
        history = recorder(trainer)
        if not trainer.is_global_zero or not in_jupyter() or history is None or not history.rows:
            return
        from IPython.display import Image, display

        picture = Image(data=plots.png_bytes(plots.pixels(plots.learning_curves(history.rows))))
        if self._shown is None:
            self._shown = display(picture, display_id=True)
        else:
            self._shown.update(picture)


def in_jupyter() -> bool:
    """Whether this process is a Jupyter kernel (IPython's shell there has a kernel)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


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
