"""Writing a file so that a crash, a kill or a full disk leaves either the old file or the new one.

Used by every writer in mnistlit: checkpoints, exported models, figures, history.csv and the
dataset's files. (Lives outside core/, runs/ and deploy/ because runs/ and deploy/ both use it.)
"""

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def partial_path(path: Path) -> Path:
    """A hidden temporary name beside ``path``, with the same suffix (loaders go by it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")


def write_synced(path: Path, data: bytes | memoryview | Callable[[BinaryIO], object]) -> None:
    """Write ``data`` (or let ``data(file)`` write) into ``path`` and flush it to the disk."""
    with open(path, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_synced(partial: Path, path: Path) -> None:
    """Rename ``partial`` over ``path``, then flush the folder, so the rename survives a power cut."""
    os.replace(partial, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def atomic_write(path: Path, data: bytes | memoryview | Callable[[BinaryIO], object]) -> None:
    """Write ``path`` atomically: a temporary name, fsync, rename, fsync of the folder.

    On any failure (an OSError such as a full disk, or a signal) the temporary file is removed
    and ``path`` is as it was; the error goes to the caller, which says what was kept.
    """
    partial = partial_path(path)
    try:
        write_synced(partial, data)
        replace_synced(partial, path)
    finally:
        remove_partial(partial)


def remove_partial(partial: Path) -> None:
    """Remove a temporary file if it is there. Where it could not be made (a read-only folder),
    removing it fails too: that error would hide the one that says what happened."""
    with contextlib.suppress(OSError):
        partial.unlink(missing_ok=True)
