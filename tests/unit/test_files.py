"""files.py: the one way mnistlit writes a file, whole or not at all."""

from pathlib import Path

import pytest

from mnistlit.files import atomic_write, partial_path


def test_a_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_bytes(b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")

    def half_then_fail(file) -> None:
        file.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_the_partial_name_is_hidden_and_keeps_the_suffix_loaders_go_by(tmp_path: Path) -> None:
    partial = partial_path(tmp_path / "model.pt2")
    assert partial.name.startswith(".model.") and partial.suffix == ".pt2" and partial.parent == tmp_path
