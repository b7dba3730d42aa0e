"""The command line: LightningCLI with the callbacks, defaults and checkpoint handling we always want."""

import ctypes
import logging
import os
import sys
import warnings
from pathlib import Path

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnistlit import checkpoints
from mnistlit.callbacks import (
    CachedCudaCheck,
    EpochHistory,
    ExactResume,
    LastCheckpoint,
    PredictionCSV,
    RunPictures,
)
from mnistlit.data import MNISTDataModule
from mnistlit.errors import MnistlitError
from mnistlit.module import LitClassifier


class MnistCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_acc",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch:02d}-{val_acc:.4f}",
            }
        )
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {"early_stopping.monitor": "val_acc", "early_stopping.mode": "max", "early_stopping.patience": 3}
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        max_epochs = config.trainer.get("max_epochs")
        if max_epochs is not None and max_epochs < 1 and max_epochs != -1:
            raise MnistlitError(
                f"trainer.max_epochs must be at least 1 (or -1 for no limit), got {max_epochs}"
            )
        if config.get("weights_only") is None:
            config.weights_only = True
        if config.get("ckpt_path"):
            path = checkpoints.resolve(config.ckpt_path, runs_folder(config.trainer))
            checkpoints.load(path)
            config.ckpt_path = str(path)

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the model's hyperparameters from ``--ckpt_path``; name the file they do not fit."""
        try:
            super()._parse_ckpt_path()
        except SystemExit as e:
            path = self.config[self.config.subcommand].ckpt_path
            raise MnistlitError(
                f"checkpoint {path} was not written by this model: its hyperparameters do not fit"
            ) from e

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Give the run its own ``version_N`` folder, or the checkpoint's folder when fit resumes."""
        config = self.config_init[self.subcommand]
        logger = config.trainer.get("logger")
        if logger is None or logger is True:
            runs = runs_folder(self.config[self.subcommand].trainer)
            ckpt_path = config.get("ckpt_path")
            run = Path(ckpt_path).parent.parent if ckpt_path else None
            resuming = (
                self.subcommand == "fit"
                and run is not None
                and run.parent.resolve() == runs.resolve()
                and checkpoints.version_of(run) >= 0
            )
            if resuming:
                version = checkpoints.version_of(run)
                self.save_config_kwargs["overwrite"] = True  # the run's own config.yaml, now with ckpt_path
            else:
                version = self._reserve_version(runs)
            # default_hp_metric=False: the HParams tab gets the real final metrics (RunPictures).
            kwargs["logger"] = TensorBoardLogger(
                save_dir=runs.parent, name=runs.name, version=version, default_hp_metric=False
            )
        if config.trainer.get("plugins") is None:
            kwargs["plugins"] = [checkpoints.AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    @staticmethod
    def _reserve_version(runs: Path) -> int | None:
        if rank_zero_only.rank != 0:
            return None  # other DDP ranks log nothing; rank 0's folder is broadcast to them
        try:
            return checkpoints.reserve_run_folder(runs)
        except OSError as e:
            raise MnistlitError(f"cannot create a run folder in {runs}: {e.strerror or e}") from e

    def _check_checkpoint_fits(self) -> None:
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt_path:
            checkpoints.check_fits(ckpt_path, self.model)

    before_fit = before_validate = before_test = before_predict = _check_checkpoint_fits


def runs_folder(trainer: Namespace) -> Path:
    """The folder that holds this config's ``version_N`` run folders (the logger's root)."""
    logger = trainer.get("logger")
    root = Path(trainer.get("default_root_dir") or ".")
    if isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
        init = logger.init_args
        return Path(init.get("save_dir") or root) / (init.get("name") or "lightning_logs")
    return root / "lightning_logs"


def quiet_known_noise() -> None:
    """Silence messages that tell a user nothing about their run."""
    # Lightning 2.6 calls a torch API that torch 2.14 deprecated; nothing for a user to do.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # test/predict in a new process restore a checkpoint from another run's folder, by design.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    # Each run's version_N folder is created before the logger sees it.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


def keep_freed_memory() -> None:
    """Tell glibc's malloc to keep freed memory for the next step instead of returning it.

    By default glibc raises its mmap threshold as large blocks are freed and trims the heap
    back to the OS, so after the first epoch each CPU training step page-faulted ~6,700
    fresh pages and took 31 ms instead of 23 ms (base.yaml, 2-core machine). The same as
    exporting MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_; if either is exported,
    that setting is left as it is.
    """
    exported = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & os.environ.keys()
    if exported or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 2**31 - 1)
    mallopt(m_trim_threshold, 2**31 - 1)


def main(args: list[str] | None = None) -> None:
    keep_freed_memory()
    quiet_known_noise()
    try:
        MnistCLI(
            LitClassifier,
            MNISTDataModule,
            trainer_defaults={
                "callbacks": [
                    ExactResume(),
                    CachedCudaCheck(),
                    EpochHistory(),
                    RunPictures(),
                    PredictionCSV(),
                ]
            },
            auto_configure_optimizers=False,
            args=args,
        )
    except SIGTERMException:
        sys.exit("mnistlit: stopped by SIGTERM after saving last.ckpt; resume with --ckpt_path last")
    except (MnistlitError, MisconfigurationException) as e:
        sys.exit(f"mnistlit: error: {' '.join(str(e).split())}")


if __name__ == "__main__":
    main()
