"""The command line: LightningCLI with the callbacks, defaults and checkpoint aliases we always want."""

import logging
import sys
import warnings
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mnistlit.callbacks import EpochHistory, PredictionCSV
from mnistlit.data import MNISTDataModule
from mnistlit.errors import MnistlitError
from mnistlit.module import LitClassifier

CHECKPOINT_ALIASES = ("best", "last")


class MnistCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_acc",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:02d}-{val_acc:.4f}",
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {"early_stopping.monitor": "val_acc", "early_stopping.mode": "max", "early_stopping.patience": 3}
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path"):
            config = self.config[subcommand]
            config.ckpt_path = str(resolve_checkpoint(config.ckpt_path, runs_folder(config.trainer)))

    def _parse_ckpt_path(self) -> None:
        try:
            super()._parse_ckpt_path()
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, say which file
            path = self.config[self.config.subcommand].ckpt_path
            raise MnistlitError(f"cannot load checkpoint {path}: {_one_line(e)}") from e


def runs_folder(trainer: Namespace) -> Path:
    """The folder that holds this config's ``version_N`` run folders (the logger's root)."""
    logger = trainer.get("logger")
    root = Path(trainer.get("default_root_dir") or ".")
    if isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
        init = logger.init_args
        return Path(init.get("save_dir") or root) / (init.get("name") or "lightning_logs")
    return root / "lightning_logs"


def resolve_checkpoint(ckpt_path: str, runs: Path) -> Path:
    """Turn ``best``/``last`` into the file of the newest run that has one; check other paths exist.

    Lightning resolves these aliases only inside the run that wrote them, and every new
    process starts a new ``version_N`` folder, so a later ``test --ckpt_path best`` needs this.
    """
    if ckpt_path not in CHECKPOINT_ALIASES:
        if not Path(ckpt_path).is_file():
            raise MnistlitError(f"--ckpt_path {ckpt_path}: no such file")
        return Path(ckpt_path)

    def version(folder: Path) -> int:
        suffix = folder.parent.name.removeprefix("version_")
        return int(suffix) if suffix.isdigit() else -1

    for folder in sorted(runs.glob("version_*/checkpoints"), key=version, reverse=True):
        found = best_checkpoint(folder) if ckpt_path == "best" else folder / "last.ckpt"
        if found is not None and found.is_file():
            return found
    raise MnistlitError(
        f"--ckpt_path {ckpt_path}: no run under {runs}/ has a {ckpt_path} checkpoint yet "
        "(train first: python -m mnistlit fit --config ...)"
    )


def best_checkpoint(folder: Path) -> Path | None:
    """The best checkpoint ModelCheckpoint recorded in ``last.ckpt``, else the only ``best*.ckpt``."""
    last = folder / "last.ckpt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        for key, callback_state in state.get("callbacks", {}).items():
            if key.startswith("ModelCheckpoint") and callback_state.get("best_model_path"):
                return folder / Path(callback_state["best_model_path"]).name
    candidates = list(folder.glob("best*.ckpt"))
    return candidates[0] if len(candidates) == 1 else None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def quiet_known_noise() -> None:
    """Silence messages that tell a user nothing about their run."""
    # Batches are slices of in-memory tensors: worker processes would only add copies.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # Lightning 2.6 calls a torch API that torch 2.14 deprecated; nothing for a user to do.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # test/predict in a new process restore a checkpoint from another run's folder, by design.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


def main(args: list[str] | None = None) -> None:
    quiet_known_noise()
    try:
        MnistCLI(
            LitClassifier,
            MNISTDataModule,
            trainer_defaults={"callbacks": [EpochHistory(), PredictionCSV()]},
            auto_configure_optimizers=False,
            args=args,
        )
    except (MnistlitError, MisconfigurationException) as e:
        sys.exit(f"mnistlit: error: {_one_line(e)}")


if __name__ == "__main__":
    main()
