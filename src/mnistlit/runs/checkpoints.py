"""Checkpoint files: written atomically, loaded safely, checked before a run trusts them, and
last.ckpt, the run's latest state."""

import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mnistlit.core.errors import MnistlitError, one_line
from mnistlit.files import atomic_write

CHECKPOINT_ALIASES = ("best", "last")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves with ``files.atomic_write``: a crash, SIGKILL or full disk while saving leaves the
    previous file intact.

    (Lightning's own save goes through an fsspec transaction whose temporary file lives in
    the system temp folder; across filesystems its final move is a plain copy.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        # Serialised in memory first: torch's zip writer reports a failed write (a full disk)
        # as a RuntimeError without the reason; a plain write reports it as an OSError.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, buffer.getbuffer())
        except OSError as e:
            kept = f"; the previous {path.name} is unchanged" if path.exists() else ""
            raise MnistlitError(f"could not save checkpoint {path}: {e.strerror or e}{kept}") from e


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything wrong with the file is one clear error."""
    if Path(path).is_dir():
        raise MnistlitError(f"cannot load checkpoint {path}: it is a folder, not a checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, random bytes, forbidden pickle globals...
        raise MnistlitError(f"cannot load checkpoint {path}: {_why_unloadable(path, e)}") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise MnistlitError(
            f"cannot load checkpoint {path}: it is not a Lightning checkpoint (no state_dict)"
        )
    return checkpoint


# How torch.save's files begin: its zip format, and its legacy format (a pickled magic number).
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19")


def _why_unloadable(path: str | Path, error: Exception) -> str:
    reason = one_line(error, 200)
    if isinstance(error, OSError):
        return error.strerror or reason
    if os.path.getsize(path) == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        start = f.read(16)
    if not start.startswith(TORCH_FILE_STARTS):
        return "not a PyTorch checkpoint: the file is in neither of torch.save's formats"
    if "Weights only load failed" in reason:
        return "it holds pickled objects other than tensors and plain data; refusing to load it"
    # torch's own messages for a damaged file are often bare ('101', ''): say what the file is not.
    kind = type(error).__name__
    return f"not a complete PyTorch checkpoint ({kind if reason == kind else f'{kind}: {reason}'})"


def check_fits(checkpoint: dict[str, Any], path: str | Path, model: torch.nn.Module) -> None:
    """Refuse a checkpoint whose weights do not fit ``model`` (another network, another task)."""
    saved = checkpoint["state_dict"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    reshaped = [k for k in expected.keys() & saved.keys() if saved[k].shape != expected[k].shape]
    problems = [
        f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("other shape", sorted(reshaped)),
        )
        if keys
    ]
    if problems:
        raise MnistlitError(f"checkpoint {path} does not fit this model ({'; '.join(problems)})")


def check_same_split(checkpoint: dict, datamodule, path: str) -> None:
    """Refuse to train on from a checkpoint whose run split the data differently: its
    validation images could be this run's training images, and the reverse."""
    saved = checkpoint.get("datamodule_hyper_parameters")
    if not saved:
        return
    now = {
        "dataset": datamodule.dataset.name,
        "val_size": datamodule.val_size,
        "split_seed": datamodule.split_seed,
    }
    dataset = saved.get("dataset")
    then = {
        "dataset": dataset if isinstance(dataset, str) else (dataset or {}).get("name", "mnist"),
        "val_size": saved.get("val_size"),
        "split_seed": saved.get("split_seed"),
    }
    differing = [f"data.{key} {then[key]} -> {now[key]}" for key in now if then[key] != now[key]]
    if differing:
        raise MnistlitError(
            f"checkpoint {path} was trained on another train/validation split ({', '.join(differing)}); "
            "continue it with its own data settings, or train from scratch"
        )


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
