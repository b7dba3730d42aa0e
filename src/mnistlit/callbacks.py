"""Callbacks the CLI always adds: exact resume, per-epoch history, predictions CSV."""

import csv
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


class PeriodicLastCheckpoint(ModelCheckpoint):
    """Rewrites ``last.ckpt`` every ``every_n_train_steps`` steps, so a crash loses at most that many.

    The best-by-val_acc ModelCheckpoint saves at epoch ends; this one exists so that a run
    killed mid-epoch resumes mid-epoch (the data loader's position is in the checkpoint).
    """

    def __init__(self, every_n_train_steps: int = 100) -> None:
        super().__init__(save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps)


class ExactResume(L.Callback):
    """What a bit-exact resume needs beyond Lightning's own state.

    - The global RNG states travel with every checkpoint and are put back when training
      restarts: dropout draws from them, and Lightning does not save them.
    - SIGTERM or Ctrl-C writes ``last.ckpt`` before the run stops. (ModelCheckpoint's
      ``save_on_exception`` would also save on any error, including a NaN loss, and would
      name the file like a best checkpoint.)
    """

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

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        stopped = isinstance(exception, KeyboardInterrupt | SIGTERMException)
        if not stopped or not trainer.training or trainer.checkpoint_callback is None:
            return
        path = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        trainer.save_checkpoint(path)
        rank_zero_info(f"stopped at step {trainer.global_step}; saved {path}")


class EpochHistory(L.Callback):
    """One row of epoch metrics per epoch, written to ``history.csv`` in the run folder as
    each epoch ends and printed as a table when fit ends (the seed's ``dfhistory``).

    A row is completed when the next epoch starts (or training ends): callbacks see
    ``on_train_epoch_end`` before the LightningModule logs its epoch-level train metrics.
    The rows travel in checkpoints, so a resumed run keeps the history of the first part
    (the epoch that was cut short counts the seconds of its second part only).
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.path: Path | None = None
        self._pending: dict[str, float] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = state_dict["rows"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_timing(trainer)  # a run resumed mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._complete_row(trainer)
        self._start_timing(trainer)

    def _start_timing(self, trainer: L.Trainer) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._started
        self._pending = {"epoch": trainer.current_epoch, "lr": self._lr, "seconds": seconds}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._complete_row(trainer)

    def _complete_row(self, trainer: L.Trainer) -> None:
        if self._pending is None:
            return
        metrics = trainer.callback_metrics
        row = {name: float(metrics[name]) if name in metrics else float("nan") for name in HISTORY_COLUMNS}
        row.update(self._pending)
        self.rows.append(row)
        self._pending = None
        self._write(trainer)

    @rank_zero_only
    def _write(self, trainer: L.Trainer) -> None:
        if trainer.log_dir is None:
            return
        self.path = Path(trainer.log_dir) / "history.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)

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


class PredictionCSV(BasePredictionWriter):
    """Writes ``predictions.csv`` (index, target, prediction, probability) into the run folder."""

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.filename = filename
        self.path: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path = (Path(trainer.log_dir or trainer.default_root_dir) / self.filename).resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerow(["index", "target", "prediction", "probability"])

    def write_on_batch_end(
        self, trainer, pl_module, prediction: torch.Tensor, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        probability, predicted = prediction.max(dim=1)
        targets = batch[1].tolist()
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerows(
                (index, target, label, f"{p:.6f}")
                for index, target, label, p in zip(
                    batch_indices, targets, predicted.tolist(), probability.tolist(), strict=True
                )
            )

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(f"predictions written to {self.path}")
