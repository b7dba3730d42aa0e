"""Two real DDP processes on the CPU (gloo), launched by Lightning from the user's command."""

import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch

from mnistlit.core.datasets import IDXDataset
from mnistlit.runs.data import MNISTDataModule
from tests.helpers import CONFIGS, PYTHON, ROOT, tiny_config, write_synthetic_mnist
from tests.shard_recorder import image_digest

DDP = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")


RECORD = ("--trainer.callbacks+", "tests.shard_recorder.RecordShards")


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    result = subprocess.run(
        [PYTHON, "-m", "mnistlit", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def printed_test_acc(result: subprocess.CompletedProcess) -> str:
    return re.search(r"test_acc\s+([0-9.]+)", result.stdout).group(1)


def assert_two_disjoint_shards_of_the_training_set(workdir: Path, md5: dict, epochs: tuple[int, ...]) -> None:
    """RecordShards' files of ranks 0 and 1: in each epoch, half of the 1,400 training images each,
    and together every one exactly once."""
    datamodule = MNISTDataModule(str(workdir / "data"), val_size=100, dataset=IDXDataset(md5=md5, mirrors=[]))
    datamodule.setup("fit")
    training_set = Counter(image_digest(image) for image in datamodule.train_set.images)
    for epoch in epochs:
        rank0, rank1 = (
            Counter(json.loads((workdir / "shards" / f"rank{rank}-epoch{epoch}.json").read_text()))
            for rank in (0, 1)
        )
        assert rank0.total() == rank1.total() == 700, "each rank trains on half of the 1,400 images"
        assert rank0 + rank1 == training_set, "together the ranks see every training image exactly once"


@pytest.mark.slow
def test_two_process_ddp_fit_shards_the_data_and_writes_one_run(tmp_path: Path) -> None:
    md5 = write_synthetic_mnist(tmp_path / "data" / "mnist")
    tiny_config(tmp_path, md5, max_epochs=2)
    run(tmp_path, "fit", *CONFIGS, *DDP, *RECORD)

    assert_two_disjoint_shards_of_the_training_set(tmp_path, md5, epochs=(0, 1))

    runs = tmp_path / "lightning_logs"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0"], "only rank 0 creates a run folder"
    run_folder = runs / "version_0"
    assert [line.split(",")[0] for line in (run_folder / "history.csv").read_text().splitlines()] == [
        "epoch",
        "0",
        "1",
    ]
    checkpoints = sorted(p.name for p in (run_folder / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints
    state = torch.load(run_folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 * 22  # ceil(700 / 32) steps per epoch on each rank

    # Metrics are synced across ranks: DDP test on 100 + 100 images = one process on 200.
    best = ("--ckpt_path", "best")
    single = printed_test_acc(run(tmp_path, "test", *CONFIGS, *best))
    assert printed_test_acc(run(tmp_path, "test", *CONFIGS, *DDP, *best)) == single

    run(tmp_path, "fit", *CONFIGS, *DDP, "--ckpt_path", "last", "--trainer.max_epochs", "3")
    state = torch.load(run_folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 * 22, "the resumed DDP run went on from epoch 2"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1", "version_2"]
