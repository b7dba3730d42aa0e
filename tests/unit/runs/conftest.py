"""Fixtures of the tests of mnistlit.runs."""

import functools
from pathlib import Path

import pytest

from mnistlit import MNISTDataModule
from mnistlit.core.datasets import IDXDataset


@pytest.fixture
def data(tiny_data, tmp_path: Path, monkeypatch) -> functools.partial:
    """A factory of datamodules over the synthetic files, in a working folder of its own."""
    data_dir, md5 = tiny_data
    monkeypatch.chdir(tmp_path)
    dataset = IDXDataset(md5=md5, mirrors=[])
    return functools.partial(
        MNISTDataModule, data_dir=str(data_dir), batch_size=32, val_size=100, dataset=dataset
    )
