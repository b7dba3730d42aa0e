"""Checkpoint files: written atomically, found by alias, checked before a run trusts them."""

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mnistlit.errors import MnistlitError

CHECKPOINT_ALIASES = ("best", "last")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file in the target folder, flushes it to disk, then renames it
    over the target: a crash or SIGKILL while saving leaves the previous file intact.

    (Lightning's own save goes through an fsspec transaction whose temporary file lives in
    the system temp folder; across filesystems its final move is a plain copy.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything wrong with the file is one clear error."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, random bytes, forbidden pickle globals...
        reason = " ".join(str(e).split())
        if "Weights only load failed" in reason:
            reason = "it holds pickled objects other than tensors and plain data; refusing to load it"
        raise MnistlitError(f"cannot load checkpoint {path}: {reason[:300]}") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise MnistlitError(
            f"cannot load checkpoint {path}: it is not a Lightning checkpoint (no state_dict)"
        )
    return checkpoint


def check_fits(path: str | Path, model: torch.nn.Module) -> None:
    """Refuse a checkpoint whose weights do not fit ``model`` (another network, another task)."""
    saved = load(path)["state_dict"]
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


def resolve(ckpt_path: str, runs: Path) -> Path:
    """Turn ``best``/``last`` into the file of the newest run that has one; check other paths exist.

    Lightning resolves these aliases only inside the run that wrote them, and every new
    process starts a new ``version_N`` folder, so a later ``test --ckpt_path best`` needs this.
    """
    if ckpt_path not in CHECKPOINT_ALIASES:
        if not Path(ckpt_path).is_file():
            raise MnistlitError(f"--ckpt_path {ckpt_path}: no such file")
        return Path(ckpt_path)
    for folder in sorted(
        runs.glob("version_*/checkpoints"), key=lambda f: version_of(f.parent), reverse=True
    ):
        found = best_in(folder) if ckpt_path == "best" else folder / "last.ckpt"
        if found is not None and found.is_file():
            return found
    raise MnistlitError(
        f"--ckpt_path {ckpt_path}: no run under {runs}/ has a {ckpt_path} checkpoint yet "
        "(train first: python -m mnistlit fit --config ...)"
    )


def best_in(folder: Path) -> Path | None:
    """The best checkpoint ModelCheckpoint recorded in ``last.ckpt``, else the only ``best*.ckpt``."""
    last = folder / "last.ckpt"
    if last.is_file():
        for key, state in load(last).get("callbacks", {}).items():
            recorded = key.startswith("ModelCheckpoint") and state.get("best_model_path")
            if recorded and (folder / Path(recorded).name).is_file():
                return folder / Path(recorded).name
    candidates = list(folder.glob("best*.ckpt"))
    return candidates[0] if len(candidates) == 1 else None


def version_of(run: Path) -> int:
    """N for a ``version_N`` folder, -1 for anything else."""
    suffix = run.name.removeprefix("version_")
    return int(suffix) if suffix.isdigit() else -1


def reserve_run_folder(runs: Path) -> int:
    """Create the next free ``version_N`` folder and return N.

    ``mkdir`` either creates the folder or fails, so two runs started at the same moment
    never get the same folder (TensorBoardLogger only lists the folders and picks the next).
    """
    runs.mkdir(parents=True, exist_ok=True)
    version = max((version_of(p) for p in runs.iterdir()), default=-1) + 1
    while True:
        try:
            (runs / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1
