"""Trackers beside TensorBoard (MLflow, Weights & Biases): each gets the run's pictures, history,
config and best checkpoint; a resumed run goes on in the same tracker run; a tracker that cannot
start says so in one line before any training."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from PIL import Image

from mnistlit.core.errors import MnistlitError
from mnistlit.runs.folders import run_folder

# The loggers that are trackers of their own, beside the run folder's files.
TRACKERS = (MLFlowLogger, WandbLogger)
# The extra that installs each tracker's library: pip install 'mnistlit[mlflow]'.
EXTRAS = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}
RUN_FILES = ("history.csv", "config.yaml")
# What MLflow says before the cause when it cannot parse a tracking URI.
MLFLOW_REGISTRY_NOISE = "Model registry functionality is unavailable; "


def publish_image(trainer: L.Trainer, name: str, image: np.ndarray, png: Path) -> None:
    """Send a picture, already saved as ``png`` in the run folder, to every tracker that shows
    pictures: TensorBoard's Images tab, MLflow's ``pictures/`` artifacts, a W&B media panel."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(name, image, global_step=trainer.global_step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(png), "pictures")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=name, images=[image], step=trainer.global_step)


def log_config(trainer: L.Trainer, config: dict[str, Any], path: Path, stage: str) -> None:
    """The resolved config as a tracker's params, and ``config.yaml`` as a file of its run.

    MLflow refuses to change a param once logged, so a resumed run keeps the values it started
    with as params; its config.yaml, sent again, is the one it resumed with. A ``test`` that
    continues its checkpoint's tracker run leaves the fit's config alone: its own goes to
    MLflow as ``test/config.yaml``.
    """
    stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            started = logger.experiment.get_run(logger.run_id).data.params
            if stage != "fit" and started:
                logger.experiment.log_artifact(logger.run_id, str(path), stage)
                continue
            logger.log_hyperparams({k: v for k, v in flat(config).items() if k not in started})
            logger.experiment.log_artifact(logger.run_id, str(path))
        elif isinstance(logger, WandbLogger) and (
            stage == "fit" or "trainer" not in logger.experiment.config
        ):
            logger.experiment.config.update(config, allow_val_change=True)
            logger.experiment.save(str(path), base_path=str(path.parent), policy="now")


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"max_epochs": 3}}`` -> ``{"trainer.max_epochs": 3}``: the names users type."""
    items: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items.update(flat(value, f"{name}."))
        else:
            items[name] = json.dumps(value) if isinstance(value, list | dict) else value
    return items


class TrackerRuns(L.Callback):
    """Gives MLflow and W&B what only the run folder had, when fit ends: ``history.csv``,
    ``config.yaml`` and ``learning_curves.png`` as files of the tracker run, the best
    checkpoint's path (MLflow: a ``best_checkpoint`` tag and the file itself under
    ``checkpoints/``; W&B: ``best_checkpoint`` in the summary).

    Its state is each tracker's run id, saved in every checkpoint, so that a run resumed from
    ``last.ckpt`` logs into the same MLflow or W&B run, and a ``test`` of a checkpoint adds to
    the run that trained it (``mnistlit.Trainer`` hands the ids to the loggers before they start).
    A run stopped by a signal sends these files when its resumed run ends.
    """

    def __init__(self) -> None:
        self._loggers: list[Logger] = []  # the trainer's, on global rank 0 (the others log nothing)

    def state_dict(self) -> dict[str, Any]:
        return {type(lg).__name__: run_id(lg) for lg in self._loggers if isinstance(lg, TRACKERS)}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._loggers = trainer.loggers if trainer.is_global_zero else []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = run_folder(trainer)
        if folder is None:
            return
        saver = trainer.checkpoint_callback
        best = saver.best_model_path if isinstance(saver, ModelCheckpoint) else ""
        best = str(Path(best).resolve()) if best else best  # usable from wherever the tracker is read
        curves = folder / "learning_curves.png"
        for logger in trainer.loggers:
            for path in (folder / name for name in RUN_FILES):
                if path.is_file():
                    send_file(logger, path)
            if isinstance(logger, MLFlowLogger):
                if curves.is_file():
                    logger.experiment.log_artifact(logger.run_id, str(curves), "pictures")
                if best:
                    logger.experiment.set_tag(logger.run_id, "best_checkpoint", best)
                    logger.experiment.log_artifact(logger.run_id, best, "checkpoints")
            elif isinstance(logger, WandbLogger):
                if curves.is_file():
                    image = np.asarray(Image.open(curves).convert("RGB"))
                    logger.log_image(key="learning_curves", images=[image], step=trainer.global_step)
                if best:
                    logger.experiment.summary["best_checkpoint"] = best


def send_file(logger: Logger, path: Path) -> None:
    if isinstance(logger, MLFlowLogger):
        logger.experiment.log_artifact(logger.run_id, str(path))
    elif isinstance(logger, WandbLogger):
        logger.experiment.save(str(path), base_path=str(path.parent), policy="now")


def run_id(logger: Logger) -> str | None:
    if isinstance(logger, MLFlowLogger):
        return logger.run_id
    return str(logger.version) if isinstance(logger, WandbLogger) else None


def name_runs(loggers: Sequence[Logger], name: str) -> None:
    """Name each tracker's new run after the run folder (``version_3``), unless the config names
    it: MLflow's own names are random words, the same ones for every run with the same seed."""
    for logger in loggers:
        # Private, but the only way to name a built logger's run (tests/test_lightning_contract.py).
        if isinstance(logger, MLFlowLogger) and logger._run_name is None:
            logger._run_name = name
        elif isinstance(logger, WandbLogger) and logger._wandb_init.get("name") is None:
            logger._wandb_init["name"] = logger._name = name


def continue_runs(loggers: Sequence[Logger], checkpoint: dict[str, Any]) -> None:
    """Point each tracker at the run a checkpoint was logging to, before the logger starts: a
    resumed fit goes on in it, and a test adds its metrics and pictures to it. An MLflow run
    this store does not hold (another server, a deleted run) is left alone: a new run starts."""
    ids = checkpoint.get("callbacks", {}).get(TrackerRuns.__qualname__, {})
    for logger in loggers:
        known = ids.get(type(logger).__name__)
        # Private, but the only way to give a built logger its run (tests/test_lightning_contract.py).
        if known and isinstance(logger, MLFlowLogger) and mlflow_run_exists(logger, known):
            logger._run_id = known
        elif known and isinstance(logger, WandbLogger):
            logger._wandb_init["id"] = logger._id = known


def mlflow_run_exists(logger: MLFlowLogger, run_id: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:  # not through logger.experiment: that starts a new run when it has none
        return MlflowClient(logger._tracking_uri).get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def check_reachable(loggers: Sequence[Logger], timeout: float = 5.0) -> None:
    """An MLflow tracking server that does not answer is one line now, not MLflow's retries (4 min
    before its first request gave up, mlflow 3.17) after the run folder was made."""
    for logger in loggers:
        uri = logger._tracking_uri if isinstance(logger, MLFlowLogger) else ""
        if not uri.startswith(("http://", "https://")):
            continue
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                pass
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise MnistlitError(
                f"the MLflow tracking server at {uri} does not answer ({reason}); start it "
                "(mlflow server) or pass its address as --trainer.logger.init_args.tracking_uri"
            ) from None


def explain_start_failure(error: BaseException) -> str | None:
    """One line for a tracker that cannot be built (its extra missing, a malformed URI), from the
    chain of errors jsonargparse raises while instantiating the config; None if it is not one."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError):
            for logger, extra in EXTRAS.items():
                if extra in str(error):
                    return f"{logger} needs the {extra} extra: pip install 'mnistlit[{extra}]'"
        if type(error).__module__.startswith("mlflow"):
            first = str(error).strip().split(". ")[0]
            return f"MLFlowLogger cannot start: {first.removeprefix(MLFLOW_REGISTRY_NOISE)}"
        error = error.__cause__  # type: ignore[assignment]
    return None
