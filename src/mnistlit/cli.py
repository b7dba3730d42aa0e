"""The command line: LightningCLI wired to our callbacks, run folders and the checks every run needs."""

import signal
import sys
from importlib.metadata import version
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from mnistlit import checkpoints, precision, runs
from mnistlit.data import MNISTDataModule
from mnistlit.errors import MnistlitError, one_line
from mnistlit.module import LitClassifier
from mnistlit.pictures import RunPictures
from mnistlit.reports import HISTORY_COLUMNS, EpochHistory, EpochLines, PredictionFiles, format_table
from mnistlit.resume import ExactResume, LastCheckpoint, RunStopped, StopOnSignal
from mnistlit.runtime import CachedCudaCheck, keep_freed_memory, quiet_known_noise
from mnistlit.trainer import MnistTrainer


class MnistArgumentParser(LightningArgumentParser):
    """Parser errors in one line (``mnistlit: error: ...``) instead of the whole usage text."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse is trying alternatives: let it see the error
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = ["mnistlit", *parser.prog.replace(" [options]", "").split()[1:]]
        sys.stderr.write(f"mnistlit: error: {one_line(message)} (see: {' '.join(command)} --help)\n")
        sys.exit(2)


class MnistCLI(LightningCLI):
    # Subcommands that train or evaluate get a run folder; describe, serve and export do not.
    runs_a_model = ("fit", "validate", "test", "predict")
    checkpoint: dict | None = None  # the --ckpt_path file, loaded once (weights_only) when parsed
    new_run: Path | None = None  # the version_N folder this process created, if any

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            **LightningCLI.subcommands(),
            "describe": {"model", "datamodule"},
            "serve": {"model", "datamodule"},
            "export": {"model", "datamodule"},
        }

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self.parser.add_argument("--version", action="version", version=f"mnistlit {version('mnistlit')}")

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
        # The dataset decides how many classes the model and its network predict.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": "val_acc",
                "early_stopping.mode": "max",
                "early_stopping.patience": 3,
                # After each validation, not at each epoch's end: a run that stops within its first
                # epoch (--trainer.max_steps) has no val_acc there, and Lightning raises on that.
                "early_stopping.check_on_train_epoch_end": False,
            }
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
        if subcommand in self.runs_a_model and config.get("weights_only") is None:
            # Lightning's default for a path it did not write is a full unpickle, which runs any
            # code a crafted checkpoint carries; ours hold only tensors and plain data.
            config.weights_only = True
        if config.get("ckpt_path"):
            path = runs.resolve(config.ckpt_path, runs.runs_folder(config.trainer))
            self.checkpoint = checkpoints.load(path)
            config.ckpt_path = str(path)

    def _parse_ckpt_path(self) -> None:
        """Take the model's hyperparameters from the checkpoint (as Lightning does), from the copy
        ``parse_arguments`` loaded instead of reading the file again; name the file they do not fit."""
        hparams = dict((self.checkpoint or {}).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        subcommand = self.config.subcommand
        self.parser.exit_on_error = False
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except ArgumentError as e:
            raise MnistlitError(
                f"checkpoint {self.config[subcommand].ckpt_path} was not written by this model: "
                "its hyperparameters do not fit"
            ) from e
        finally:
            self.parser.exit_on_error = True

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Give the run its own ``version_N`` folder, or the checkpoint's folder when fit continues
        that run from its newest state (any other checkpoint starts a new run, so nothing an
        earlier run saved is overwritten). A fit holds a lock on its folder until it exits."""
        config = self.config_init[self.subcommand]
        logger = config.trainer.get("logger")
        if self.subcommand not in self.runs_a_model:
            kwargs["logger"] = False
        elif logger is None or logger is True:
            folder = runs.runs_folder(self.config[self.subcommand].trainer)
            ckpt_path = config.get("ckpt_path")
            fitting = self.subcommand == "fit"
            if fitting and ckpt_path and runs.is_newest_state_of_a_run(Path(ckpt_path), folder):
                run = Path(ckpt_path).parent.parent
                version = runs.version_of(run)
                if rank_zero_only.rank == 0:
                    runs.lock_run(run)
                self.save_config_kwargs["overwrite"] = True  # the run's own config.yaml, now with ckpt_path
            else:
                version = self._reserve_version(folder)
                if version is not None:
                    self.new_run = folder / f"version_{version}"
                    if fitting:
                        runs.lock_run(self.new_run)
            # default_hp_metric=False: the HParams tab gets the real final metrics (RunPictures).
            kwargs["logger"] = TensorBoardLogger(
                save_dir=folder.parent, name=folder.name, version=version, default_hp_metric=False
            )
        if not sys.stderr.isatty() and config.trainer.get("enable_progress_bar") is not False:
            # A bar redrawn with \r writes megabytes into a log file: one line per epoch instead.
            callbacks = [c for c in config.trainer.get("callbacks") or [] if not isinstance(c, ProgressBar)]
            config.trainer.callbacks = [*callbacks, EpochLines()]
        kwargs["precision"], why = precision.choose(
            config.trainer.get("precision"), config.trainer.get("accelerator")
        )
        if self.subcommand in self.runs_a_model and rank_zero_only.rank == 0:
            print(f"mnistlit: {why}", file=sys.stderr, flush=True)
        plugins = config.trainer.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, checkpoints.AtomicCheckpointIO()]
        try:
            return super().instantiate_trainer(**kwargs)
        except BaseException:
            self.discard_unused_run()
            raise

    @staticmethod
    def _reserve_version(folder: Path) -> int | None:
        if rank_zero_only.rank != 0:
            return None  # other DDP ranks log nothing; rank 0's folder is broadcast to them
        try:
            return runs.reserve_run_folder(folder)
        except OSError as e:
            raise MnistlitError(f"cannot create a run folder in {folder}: {e.strerror or e}") from e

    def discard_unused_run(self) -> None:
        """Remove the run folder this process created if the run failed before saving anything
        (a checkpoint or predictions): such folders only crowd TensorBoard and ``best``/``last``."""
        run, self.new_run = self.new_run, None
        if run is not None:
            runs.discard_if_unused(run)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            self.discard_unused_run()
            raise
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the run is over: nothing left to stop

    def _before_run(self) -> None:
        """Checks that need the model, the datamodule and the trainer, before the trainer runs."""
        if self.checkpoint is not None:
            checkpoints.check_fits(self.checkpoint, self.config_init[self.subcommand].ckpt_path, self.model)
        if self.subcommand == "fit":
            if self.checkpoint is not None:
                checkpoints.check_same_split(self.checkpoint, self.datamodule, self.config_init.fit.ckpt_path)
            self.model.check_monitors(self.trainer.callbacks)
        if self.subcommand == "predict" and self.trainer.world_size > 1:
            raise MnistlitError(
                "predict runs in one process (each process would predict only its share); "
                "drop the DDP settings (--trainer.strategy, --trainer.devices)"
            )

    before_fit = before_validate = before_test = before_predict = before_export = _before_run

    def after_fit(self) -> None:
        """The history as a table (the seed's ``dfhistory``), where it was saved, and what to run next."""
        if not self.trainer.is_global_zero:
            return
        history = next((c for c in self.trainer.callbacks if isinstance(c, EpochHistory)), None)
        if history is not None and history.rows:
            print(f"\n{format_table(history.rows, HISTORY_COLUMNS)}")
            print(f"\nhistory: {history.path}")
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        if best:
            configs = "".join(f" --config {path}" for path in self.config.fit.get("config") or [])
            print(f"best checkpoint: {best}")
            print(f"test it with:    python -m mnistlit test{configs} --ckpt_path best")


def stop_during_start_up(signum, frame) -> None:
    """SIGTERM before Lightning installs its own handler; inside Lightning's (which calls the
    handler it found, this one) the trainer decides when to stop."""
    if signal.getsignal(signal.SIGTERM) is stop_during_start_up:
        raise RunStopped("SIGTERM")


def main(args: list[str] | None = None) -> None:
    keep_freed_memory()
    quiet_known_noise()
    signal.signal(signal.SIGTERM, stop_during_start_up)
    stops = StopOnSignal()
    try:
        MnistCLI(
            LitClassifier,
            MNISTDataModule,
            trainer_defaults={
                "callbacks": [
                    ExactResume(),
                    stops,
                    CachedCudaCheck(),
                    EpochHistory(),
                    RunPictures(),
                    PredictionFiles(),
                ]
            },
            trainer_class=MnistTrainer,
            auto_configure_optimizers=False,
            parser_class=MnistArgumentParser,
            args=args,
        )
    except (SystemExit, KeyboardInterrupt, RunStopped) as e:
        if stops.outcome is not None:  # Lightning exits(1) after a Ctrl-C; SIGTERM arrives as SystemExit
            sys.exit(f"mnistlit: {stops.outcome}")
        if isinstance(e, SystemExit):
            raise
        name = str(e) if isinstance(e, RunStopped) else "Ctrl-C"
        sys.exit(f"mnistlit: stopped by {name} during start-up; nothing was saved")
    except (MnistlitError, MisconfigurationException) as e:
        sys.exit(f"mnistlit: error: {one_line(e, 1000)}")
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        sys.exit(f"mnistlit: error: {where}{e.strerror or e}")


if __name__ == "__main__":
    main()
