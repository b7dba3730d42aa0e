"""The private Lightning APIs mnistlit relies on, checked by name and signature, so that a
Lightning release that changes them fails here, loudly, instead of in a user's run.
pyproject.toml pins lightning to the minor version these were read from (2.6)."""

import inspect

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.core.mixins import hparams_mixin


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_model_checkpoint_methods_that_last_checkpoint_calls() -> None:  # resume.LastCheckpoint
    assert parameters(ModelCheckpoint._should_skip_saving_checkpoint) == ["self", "trainer"]
    assert parameters(ModelCheckpoint._save_last_checkpoint) == ["self", "trainer", "monitor_candidates"]
    assert parameters(ModelCheckpoint._monitor_candidates) == ["self", "trainer"]


def test_lightning_cli_methods_that_mnist_cli_overrides() -> None:  # cli.MnistCLI
    assert parameters(LightningCLI._run_subcommand) == ["self", "subcommand"]
    assert parameters(LightningCLI._parse_ckpt_path) == ["self"]
    assert parameters(LightningCLI.setup_parser) == [
        "self",
        "add_subcommands",
        "main_kwargs",
        "subparser_kwargs",
    ]


def test_the_hyperparameters_context_that_tells_the_cli_apart() -> None:  # module.LitClassifier
    assert hparams_mixin._given_hyperparameters.get() is None
    with hparams_mixin._given_hyperparameters_context({"a": 1}, instantiator="x"):
        assert hparams_mixin._given_hyperparameters.get()["a"] == 1
