"""The command line: LightningCLI wired to our callbacks, run folders and the checks every run needs."""

import logging
import signal
import sys
from pathlib import Path

import lightning as L
import yaml
from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from mnistlit import __version__
from mnistlit.core.errors import MnistlitError, one_line
from mnistlit.core.module import LitClassifier
from mnistlit.runs import checkpoints, ddp, folders, trackers
from mnistlit.runs.checkpoints import LastCheckpoint
from mnistlit.runs.data import MNISTDataModule
from mnistlit.runs.history import HISTORY_COLUMNS, format_table, recorder
from mnistlit.runs.progress import EpochLines
from mnistlit.runs.signals import RunStopped, StopOnSignal
from mnistlit.runs.trainer import BEST_CHECKPOINT, Trainer


class MnistArgumentParser(LightningArgumentParser):
    """Parser errors in one line (``mnistlit: error: ...``) instead of the whole usage text."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse is trying alternatives: let it see the error
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = ["mnistlit", *parser.prog.replace(" [options]", "").split()[1:]]
        sys.stderr.write(f"mnistlit: error: {one_line(message)} (see: {' '.join(command)} --help)\n")
        sys.exit(2)


class SaveConfig(SaveConfigCallback):
    """config.yaml in the run folder (Lightning's), and the same config for MLflow and W&B: their
    params or run config, and config.yaml as a file of their run."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning calls this on global rank 0 alone: not trainer.log_dir, which under DDP is a
        # broadcast every rank must join (the run hung there), but the folder rank 0 reserved.
        run: Path | None = getattr(trainer, "run_dir", None)
        if run is not None and any(isinstance(lg, trackers.TRACKERS) for lg in trainer.loggers):
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            trackers.log_config(trainer, config, run / self.config_filename, stage)


class MnistCLI(LightningCLI):
    # Subcommands that train or evaluate get a run folder; describe, serve and export do not.
    runs_a_model = ("fit", "validate", "test", "predict")
    checkpoint: dict | None = None  # the --ckpt_path file, loaded once (weights_only) when parsed

    ALL_SUBCOMMANDS: dict[str, set[str]] = {
        **LightningCLI.subcommands(),
        "describe": {"model", "datamodule"},
        "serve": {"model", "datamodule"},
        "export": {"model", "datamodule"},
    }

    def __init__(self, model_class, datamodule_class, *, args: list[str] | None = None, **kwargs) -> None:
        command_line = sys.argv[1:] if args is None else args
        self.named = command_line[0] if command_line else None
        super().__init__(model_class, datamodule_class, args=args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """Lightning's subcommands and ours; when the command line starts with one, that one alone:
        `fit --help` parsed in 0.56-0.90 s with all seven built, 0.12-0.24 s with one (AMD EPYC Zen 3)."""
        if self.named in self.ALL_SUBCOMMANDS:
            return {self.named: self.ALL_SUBCOMMANDS[self.named]}
        return self.ALL_SUBCOMMANDS

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self.parser.add_argument("--version", action="version", version=f"mnistlit {__version__}")
        self.parser.epilog = "Also: mnistlit search --help, a hyperparameter search on Optuna"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{key}": value for key, value in BEST_CHECKPOINT.items()})
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
        if subcommand not in self.runs_a_model:
            # describe, serve and export print what they do; Lightning's lines about the seed and
            # the accelerators would be noise above them.
            for name in ("lightning.pytorch", "lightning.fabric"):
                logging.getLogger(name).setLevel(logging.WARNING)
        if subcommand == "serve":  # before the checkpoint and the model load, not after
            from mnistlit.deploy import serve

            serve.require_extra()
            serve.check_address(config.host, config.port)
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
            runs = folders.runs_folder(config.trainer)
            path = folders.resolve(config.ckpt_path, runs, fresh_start=subcommand == "fit")
            self.checkpoint = checkpoints.load(path) if path is not None else None
            config.ckpt_path = str(path) if path is not None else None

    def instantiate_classes(self) -> None:
        """Build the config's objects; a logger that cannot start is one line naming the cause."""
        try:
            super().instantiate_classes()
        except (ValueError, ModuleNotFoundError) as e:
            line = trackers.explain_start_failure(e)
            if line is None:
                raise
            raise MnistlitError(line) from e

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

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """The run's ``mnistlit.Trainer``; its config.yaml records the precision it trains in."""
        config = self.config_init[self.subcommand]
        if self.subcommand not in self.runs_a_model:
            kwargs["logger"] = False
            kwargs["run_folder"] = False
        if not sys.stderr.isatty() and config.trainer.get("enable_progress_bar") is not False:
            # A bar redrawn with \r writes megabytes into a log file: one line per epoch instead.
            callbacks = [c for c in config.trainer.get("callbacks") or [] if not isinstance(c, ProgressBar)]
            config.trainer.callbacks = [*callbacks, EpochLines()]
        trainer = super().instantiate_trainer(**kwargs)
        self.config[self.subcommand].trainer.precision = trainer.precision
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        super()._run_subcommand(subcommand)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the run is over: nothing left to stop

    def _before_run(self) -> None:
        """Checks that need the model, the datamodule and the trainer, before the trainer runs."""
        if self.checkpoint is not None and isinstance(self.trainer, Trainer):
            self.trainer.loaded_checkpoints[self.config_init[self.subcommand].ckpt_path] = self.checkpoint
        if self.checkpoint is not None:  # describe too: it must not call a file fine that test refuses
            checkpoints.check_fits(self.checkpoint, self.config_init[self.subcommand].ckpt_path, self.model)
        if self.subcommand == "fit" and self.checkpoint is not None:
            checkpoints.check_same_split(self.checkpoint, self.datamodule, self.config_init.fit.ckpt_path)
        if self.subcommand == "predict" and self.trainer.world_size > 1:
            raise MnistlitError(
                "predict runs in one process (each process would predict only its share); "
                "drop the DDP settings (--trainer.strategy, --trainer.devices)"
            )

    before_fit = before_validate = before_test = before_predict = _before_run
    before_describe = before_serve = before_export = _before_run

    def after_fit(self) -> None:
        """The history as a table (the seed's ``dfhistory``), where it was saved, and what to run next."""
        if not self.trainer.is_global_zero:
            return
        history = recorder(self.trainer)
        if history is not None and history.rows:
            print(f"\n{format_table(history.rows, HISTORY_COLUMNS)}")
            print(f"\nhistory: {history.path}")
        saver = self.trainer.checkpoint_callback
        best = saver.best_model_path if isinstance(saver, ModelCheckpoint) else ""
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
    signal.signal(signal.SIGTERM, stop_during_start_up)
    stops = StopOnSignal()
    try:
        MnistCLI(
            LitClassifier,
            MNISTDataModule,
            trainer_defaults={"callbacks": [stops]},  # the Trainer's own, read below
            trainer_class=Trainer,
            # Each run has its own folder, and a resumed run writes its config.yaml again, with ckpt_path.
            save_config_callback=SaveConfig,
            save_config_kwargs={"overwrite": True},
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
    except RuntimeError as e:
        line = ddp.lost_process(e)
        if line is None:
            raise
        sys.exit(f"mnistlit: error: {line}")


if __name__ == "__main__":
    main()
