"""runs/process.py: the process settings every run gets."""

import os

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mnistlit.core.module import LitClassifier
from mnistlit.runs.process import CachedCudaCheck

VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"


class SeeVariable(L.Callback):
    def __init__(self, fail: bool = False) -> None:
        self.seen: list[str | None] = []
        self.fail = fail

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.seen.append(os.environ.get(VARIABLE))
        if self.fail:
            raise RuntimeError("stop here")


def fit(see: SeeVariable) -> None:
    data = TensorDataset(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        callbacks=[CachedCudaCheck(), see],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(data, batch_size=8)
    trainer.fit(LitClassifier(), train_dataloaders=loader, val_dataloaders=loader)


def test_optimizer_steps_ask_torch_for_cuda_the_cached_way_and_the_setting_comes_back() -> None:
    assert os.environ.get(VARIABLE) == "1"  # set by importing Lightning
    see = SeeVariable()
    fit(see)
    assert see.seen == ["0", "0"]
    assert os.environ.get(VARIABLE) == "1"


def test_the_setting_comes_back_when_training_fails() -> None:
    see = SeeVariable(fail=True)
    with pytest.raises(RuntimeError, match="stop here"):
        fit(see)
    assert see.seen == ["0"]
    assert os.environ.get(VARIABLE) == "1"
