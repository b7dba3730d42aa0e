"""The callback a search adds to each trial's ``fit``: it reports to the trial, and stops it when pruned."""

import os
from pathlib import Path

import lightning as L
import optuna
from lightning.pytorch.callbacks import ModelCheckpoint

# The storage's URL reaches a trial through its environment, not its config.yaml: it can hold a password.
STORAGE_VARIABLE = "MNISTLIT_SEARCH_STORAGE"


class OptunaPruning(L.Callback):
    """Report the monitored metric to an Optuna trial after each validation, and stop the fit the way
    EarlyStopping does (``trainer.should_stop``) once the pruner calls the trial hopeless, so a
    pruned run ends with its checkpoints and history like any other.

    The trial learns, as user attributes: ``run_dir`` (the run folder), ``value`` (the best
    checkpoint's score) and ``pruned_at_epoch``. Only global rank 0 talks to the storage.

    Args:
        study: the study's name in the storage ``$MNISTLIT_SEARCH_STORAGE`` names.
        trial: the trial's number in that study.
        monitor: the metric reported (the best checkpoint's).
        pruner: the study's pruner (Optuna's MedianPruner by default).
    """

    def __init__(
        self,
        study: str,
        trial: int,
        monitor: str = "val_acc",
        pruner: optuna.pruners.BasePruner | None = None,
    ) -> None:
        self.study_name = study
        self.number = trial
        self.monitor = monitor
        self.pruner = pruner
        self.trial: optuna.Trial | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        url = os.environ.get(STORAGE_VARIABLE)
        if not url:
            raise RuntimeError(f"OptunaPruning runs inside `mnistlit search`, which sets ${STORAGE_VARIABLE}")
        storage = optuna.storages.RDBStorage(url)
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.pruner)
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self.study_name), self.number
        )
        self.trial = optuna.Trial(study, trial_id)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir: Path | None = getattr(trainer, "run_dir", None)
        if self.trial is not None and run_dir is not None:
            self.trial.set_user_attr("run_dir", str(run_dir.resolve()))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        pruned = False
        value = trainer.callback_metrics.get(self.monitor)
        if self.trial is not None and value is not None:
            epoch = trainer.current_epoch
            self.trial.report(float(value), epoch)
            # After the last epoch a prune saves nothing, and would record a finished fit as pruned.
            last = (
                trainer.max_epochs is not None and trainer.max_epochs >= 0 and epoch >= trainer.max_epochs - 1
            )
            pruned = not last and self.trial.should_prune()
            if pruned:
                self.trial.set_user_attr("pruned_at_epoch", epoch)
        if trainer.strategy.broadcast(pruned):
            trainer.should_stop = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saver = trainer.checkpoint_callback
        if (
            self.trial is not None
            and isinstance(saver, ModelCheckpoint)
            and saver.best_model_score is not None
        ):
            self.trial.set_user_attr("value", float(saver.best_model_score))
