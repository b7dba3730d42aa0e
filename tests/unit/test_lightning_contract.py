"""Every private name of Lightning, torch or Starlette that mnistlit touches, checked by name and
signature, so that a release that changes one fails here, loudly, instead of in a user's run.
pyproject.toml pins lightning to the minor version these were read from (2.6)."""

import inspect
import re
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.core.mixins import hparams_mixin
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

SRC = Path(__file__).resolve().parents[2] / "src" / "mnistlit"


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_model_checkpoint_methods_that_last_checkpoint_calls() -> None:  # runs/checkpoints.py LastCheckpoint
    assert parameters(ModelCheckpoint._should_skip_saving_checkpoint) == ["self", "trainer"]
    assert parameters(ModelCheckpoint._save_last_checkpoint) == ["self", "trainer", "monitor_candidates"]
    assert parameters(ModelCheckpoint._monitor_candidates) == ["self", "trainer"]


def test_lightning_cli_methods_that_mnist_cli_overrides() -> None:  # runs/cli.py MnistCLI
    assert parameters(LightningCLI._run_subcommand) == ["self", "subcommand"]
    assert parameters(LightningCLI._parse_ckpt_path) == ["self"]
    assert parameters(LightningCLI.setup_parser) == [
        "self",
        "add_subcommands",
        "main_kwargs",
        "subparser_kwargs",
    ]


def test_the_hyperparameters_context_that_tells_the_cli_apart() -> None:  # core/module.py, core/data.py
    assert hparams_mixin._given_hyperparameters.get() is None
    with hparams_mixin._given_hyperparameters_context({"a": 1}, instantiator="x"):
        assert hparams_mixin._given_hyperparameters.get()["a"] == 1


def test_the_logger_version_the_trainer_sets(tmp_path: Path) -> None:  # runs/trainer.py _point_writers_at
    for logger in (TensorBoardLogger(tmp_path), CSVLogger(tmp_path)):
        assert logger._version is None  # not chosen until asked for
        logger._version = "version_7"
        assert Path(logger.log_dir) == tmp_path / "lightning_logs" / "version_7"


def test_the_tracker_runs_the_trainer_names_and_continues(tmp_path: Path) -> None:  # runs/trackers.py
    store = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow = MLFlowLogger(tracking_uri=store, artifact_location=str(tmp_path / "artifacts"))
    assert (mlflow._run_id, mlflow._run_name, mlflow._tracking_uri) == (None, None, store)
    mlflow._run_name = "version_7"
    first = mlflow.run_id
    assert mlflow.experiment.get_run(first).info.run_name == "version_7"
    again = MLFlowLogger(tracking_uri=store)
    again._run_id = first
    assert again.run_id == first
    wandb = WandbLogger(save_dir=tmp_path, offline=True)
    assert wandb._wandb_init["id"] is None and wandb._id is None and wandb._name is None
    wandb._wandb_init["id"] = wandb._id = "abc123"
    assert wandb.version == "abc123"  # read before the run starts, as TrackerRuns' state is


def test_the_cpu_bf16_checks_precision_reads() -> None:  # runs/precision.py cpu_bf16_instructions
    assert isinstance(torch.cpu._is_amx_tile_supported(), bool)
    assert isinstance(torch.cpu._is_avx512_bf16_supported(), bool)


def test_no_other_private_name_of_a_library_is_touched() -> None:
    """Each private name imported, or read off an object that is not ``self``, is one of those
    checked above. (Inherited private methods called through ``self`` cannot be told from our
    own by their text: LastCheckpoint's and MnistCLI's are listed above by hand.)"""
    allowed = {
        "_should_skip_saving_checkpoint", "_save_last_checkpoint", "_monitor_candidates",  # ModelCheckpoint
        "_run_subcommand", "_parse_ckpt_path",  # LightningCLI
        "_given_hyperparameters", "_version",  # Lightning's hparams context, a logger's version
        "_run_id", "_run_name", "_tracking_uri", "_wandb_init", "_id", "_name",  # MLflow's and W&B's loggers
        "_is_amx_tile_supported", "_is_avx512_bf16_supported",  # torch.cpu
        "_core",  # numpy._core.multiarray._reconstruct: the one global the MNIST pickle may name
        "_reconstruct",
    }  # fmt: skip
    touched = set()
    for path in SRC.rglob("*.py"):
        for line in path.read_text().splitlines():
            code = line.split("#")[0]
            touched |= set(re.findall(r"(?<!self)(?<!super\(\))\.(_[a-z]\w*)", code))
            touched |= set(re.findall(r"\bimport\s+(_[a-z]\w*)", code))
    assert touched <= allowed, sorted(touched - allowed)
