"""``mnistlit.Trainer``: Lightning's Trainer with what makes a run safe and visible, for the command
line and plain Python alike, and the subcommands a trained model needs after training.

LightningCLI runs ``mnistlit NAME`` as ``trainer.NAME(model=..., datamodule=..., **options)``;
a new subcommand is a method here, its name in ``MnistCLI.subcommands()``, and its own module.
"""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from mnistlit.core.data import MNISTDataModule
from mnistlit.core.errors import MnistlitError
from mnistlit.core.module import LitClassifier
from mnistlit.deploy.images import MAX_IMAGE_PIXELS
from mnistlit.deploy.serve import MAX_UPLOAD_BYTES
from mnistlit.deploy.summary import describe, run_relative, summary
from mnistlit.runs import checkpoints, folders, precision, trackers
from mnistlit.runs.checkpoints import LastCheckpoint
from mnistlit.runs.history import HISTORY_COLUMNS, EpochHistory, LiveCurves, recorder
from mnistlit.runs.nonfinite import NonFiniteLoss
from mnistlit.runs.pictures import RunPictures
from mnistlit.runs.predictions import PredictionFiles
from mnistlit.runs.process import CachedCudaCheck, keep_freed_memory, quiet_known_noise
from mnistlit.runs.rng import ExactResume
from mnistlit.runs.signals import StopOnSignal
from mnistlit.runs.trackers import TrackerRuns
from mnistlit.runs.unsure import UnsureThreshold

# The best weights by validation accuracy (the seed recipe's checkpoint); the CLI's defaults too.
BEST_CHECKPOINT: dict[str, Any] = {
    "monitor": "val_acc",
    "mode": "max",
    "save_top_k": 1,
    "filename": "best-{epoch:02d}-{val_acc:.4f}",
}


def best_checkpoint() -> ModelCheckpoint:
    return ModelCheckpoint(**BEST_CHECKPOINT)


class Trainer(L.Trainer):
    """A Lightning Trainer whose every fit, validate, test and predict gets its own run folder.

    ``<root>/lightning_logs/version_N`` (``root`` is ``default_root_dir``, or a TensorBoard or
    CSV logger's ``save_dir``) holds everything the run writes, whatever the logger, also with
    ``logger=False`` or ``fast_dev_run``: ``config.yaml`` (CLI), ``checkpoints/`` with the best
    and ``last.ckpt``, ``history.csv`` and the pictures, the logger's files. A fit holds a lock
    on its folder while it runs. ``fit(ckpt_path="last")`` continues the newest run in its own
    folder, bit-identically; ``"best"`` and ``"last"`` name the newest run's checkpoints in a
    new process too. A run that fails before saving anything leaves no folder behind.

    Args:
        run_folder: the ``version_N`` folder, the lock and the ``best``/``last`` lookup;
            off, runs go where Lightning puts them.
        history: ``history.csv`` and ``learning_curves.png`` (EpochHistory).
        pictures: training digits, confusion matrix, mistakes, TensorBoard's HParams (RunPictures).
        prediction_files: ``predictions.csv`` and ``predictions.png`` (PredictionFiles).
        exact_resume: the RNG states in every checkpoint, put back on resume (ExactResume).
        stop_on_signal: Ctrl-C and SIGTERM save ``last.ckpt`` at a step's end (StopOnSignal).
        nonfinite_check: stop before saving weights once the loss is nan/inf (NonFiniteLoss).
        last_checkpoint: ``last.ckpt`` every 100 steps and at every epoch's end (LastCheckpoint),
            unless ``callbacks`` has one; with ``enable_checkpointing``, a best-by-``val_acc``
            checkpoint is added too unless ``callbacks`` has a ModelCheckpoint that monitors.
        precision_check: train in bf16 only where the hardware computes it (else ``32-true``),
            and say which precision runs and why.
        unsure_threshold: calibrate on the validation split the probability under which
            ``predict`` and ``serve`` call an answer unsure (UnsureThreshold).
        tracker_runs: MLflow and W&B loggers get history.csv, config.yaml, the curves and the
            best checkpoint, and a resumed run continues their run (TrackerRuns).
        live_curves: inside Jupyter, redraw the learning curves below the cell once per epoch
            (LiveCurves); elsewhere it does nothing.
        **kwargs: ``lightning.Trainer``'s arguments.
    """

    def __init__(
        self,
        *,
        run_folder: bool = True,
        history: bool = True,
        pictures: bool = True,
        prediction_files: bool = True,
        exact_resume: bool = True,
        stop_on_signal: bool = True,
        nonfinite_check: bool = True,
        last_checkpoint: bool = True,
        precision_check: bool = True,
        unsure_threshold: bool = True,
        tracker_runs: bool = True,
        live_curves: bool = True,
        **kwargs: Any,
    ) -> None:
        quiet_known_noise()
        keep_freed_memory()
        self.precision_reason = None
        if precision_check:
            chosen, self.precision_reason = precision.choose(
                kwargs.get("precision"), kwargs.get("accelerator", "auto")
            )
            if chosen is not None:
                kwargs["precision"] = chosen
        if kwargs.get("logger") in (None, True):
            # default_hp_metric=False: the HParams tab gets the real final metrics (RunPictures).
            root = kwargs.get("default_root_dir") or "."
            kwargs["logger"] = TensorBoardLogger(
                save_dir=root, name="lightning_logs", default_hp_metric=False
            )
        callbacks = kwargs.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        switched = (
            (exact_resume, ExactResume),
            (stop_on_signal, StopOnSignal),
            (nonfinite_check, NonFiniteLoss),
            (history, EpochHistory),
            (pictures, RunPictures),
            (prediction_files, PredictionFiles),
            (unsure_threshold, UnsureThreshold),
            (tracker_runs, TrackerRuns),
            (live_curves, LiveCurves),
            (True, CachedCudaCheck),
        )
        added: list[Callback] = [
            make() for on, make in switched if on and not any(isinstance(c, make) for c in callbacks)
        ]
        if kwargs.get("enable_checkpointing", True):
            if not any(isinstance(c, ModelCheckpoint) and c.monitor for c in callbacks):
                added.append(best_checkpoint())
            if last_checkpoint and not any(isinstance(c, LastCheckpoint) for c in callbacks):
                added.append(LastCheckpoint())
        kwargs["callbacks"] = [*added, *callbacks]
        plugins = kwargs.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, checkpoints.AtomicCheckpointIO()]
        super().__init__(**kwargs)
        self.uses_run_folder = run_folder
        self.run_dir: Path | None = None  # this run's version_N folder, on global rank 0
        self.loaded_checkpoints: dict[str, dict[str, Any]] = {}

    @property
    def history(self) -> Any:
        """The epoch history of the last fit, one row per epoch (history.csv's): a pandas
        DataFrame where pandas is installed (the seed's ``dfhistory``), else a list of dicts."""
        history = recorder(self)
        rows = list(history.rows) if history is not None else []
        try:
            import pandas
        except ImportError:
            return rows
        return pandas.DataFrame(rows, columns=list(HISTORY_COLUMNS))

    @property
    def runs_dir(self) -> Path:
        """The folder of the ``version_N`` run folders: a TensorBoard or CSV logger's root, else
        ``default_root_dir/lightning_logs``."""
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger | CSVLogger):
                return Path(logger.root_dir)
        return Path(self.default_root_dir) / "lightning_logs"

    @property
    def log_dir(self) -> str | None:
        """This run's folder while it runs (the same on every process), else Lightning's answer."""
        if not self.uses_run_folder or (self.run_dir is None and self.world_size == 1):
            return super().log_dir
        return self.strategy.broadcast(str(self.run_dir) if self.run_dir is not None else None)

    @contextmanager
    def _in_run_folder(self, stage: str, ckpt_path: str | Path | None) -> Iterator[str | Path | None]:
        """Reserve (or, for a fit continuing a run's ``last.ckpt``, reopen) the run folder and point
        every writer at it; yield ``ckpt_path`` with ``best``/``last`` resolved to files."""
        rank = getattr(rank_zero_only, "rank", 0)  # the process's global rank, known before DDP starts
        if rank == 0 and self.precision_reason:
            print(f"mnistlit: {self.precision_reason}", file=sys.stderr, flush=True)
        if not self.uses_run_folder:
            yield ckpt_path
            return
        if rank == 0:
            trackers.check_reachable(self.loggers)
        runs = self.runs_dir
        if ckpt_path in checkpoints.CHECKPOINT_ALIASES:
            resolved = folders.resolve(str(ckpt_path), runs, fresh_start=stage == "fit")
            ckpt_path = str(resolved) if resolved is not None else None
        if rank != 0:
            yield ckpt_path  # other DDP ranks write no files; rank 0's folder is broadcast to them
            return
        new = resumed = False
        if self.run_dir is not None:
            pass  # one Trainer, one run folder: a test after a fit writes beside it, as in Lightning
        elif stage == "fit" and ckpt_path and folders.is_newest_state_of_a_run(Path(ckpt_path), runs):
            self.run_dir = Path(ckpt_path).parent.parent
            resumed = True
        else:
            try:
                self.run_dir = runs / f"version_{folders.reserve_run_folder(runs)}"
            except OSError as e:
                raise MnistlitError(f"cannot create a run folder in {runs}: {e.strerror or e}") from e
            new = True
        lock: IO[str] | None = None
        try:
            tracked = any(isinstance(logger, trackers.TRACKERS) for logger in self.loggers)
            if ckpt_path and tracked and (resumed or stage == "test"):
                trackers.continue_runs(self.loggers, self.checkpoint(ckpt_path))
            if stage == "fit":
                lock = folders.lock_run(self.run_dir)
            self._point_writers_at(self.run_dir)
            yield ckpt_path
        except BaseException:
            if new:
                folders.discard_if_unused(self.run_dir)
                self.run_dir = None
            raise
        finally:
            if lock is not None:
                lock.close()

    def _point_writers_at(self, run: Path) -> None:
        for logger in self.loggers:
            # Private, but the only way to give a logger its version after it was built
            # (tests/test_lightning_contract.py).
            # Resolved: a run resumed from a last.ckpt named by its absolute path is the same folder.
            if isinstance(logger, TensorBoardLogger | CSVLogger) and (
                Path(logger.root_dir).resolve() == run.parent.resolve()
            ):
                logger._version = run.name
        trackers.name_runs(self.loggers, run.name)
        for callback in self.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(run / "checkpoints")

    def _check_monitors(self, model: L.LightningModule) -> None:
        """Every metric a callback monitors must be one the model logs (else it fails after an epoch)."""
        logged = getattr(model, "logged_metrics", None)
        if logged is None:
            return
        for callback in self.callbacks:  # type: ignore[attr-defined]  # set by Lightning's connectors at run time
            monitor = getattr(callback, "monitor", None)
            if isinstance(callback, EarlyStopping | ModelCheckpoint) and monitor not in (None, *logged):
                kind = "early stopping" if isinstance(callback, EarlyStopping) else "checkpoint"
                raise MnistlitError(
                    f"{kind} monitors {monitor!r}, which the model never logs; "
                    f"choose one of {', '.join(logged)}"
                )

    def fit(
        self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None, **kwargs
    ):
        self._check_monitors(model)
        with self._in_run_folder("fit", ckpt_path) as ckpt_path:
            return super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, **kwargs)

    def validate(self, model=None, dataloaders=None, ckpt_path=None, verbose=True, datamodule=None, **kwargs):
        with self._in_run_folder("validate", ckpt_path) as ckpt_path:
            return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, **kwargs)

    def test(self, model=None, dataloaders=None, ckpt_path=None, verbose=True, datamodule=None, **kwargs):
        with self._in_run_folder("test", ckpt_path) as ckpt_path:
            return super().test(model, dataloaders, ckpt_path, verbose, datamodule, **kwargs)

    def predict(
        self, model=None, dataloaders=None, datamodule=None, return_predictions=None, ckpt_path=None, **kwargs
    ):
        with self._in_run_folder("predict", ckpt_path) as ckpt_path:
            return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, **kwargs)

    def checkpoint(self, ckpt_path: str | Path) -> dict[str, Any]:
        """The checkpoint file, loaded safely once (the CLI hands over the copy it loaded to parse
        the model's settings from it)."""
        key = str(ckpt_path)
        if key not in self.loaded_checkpoints:
            self.loaded_checkpoints[key] = checkpoints.load(ckpt_path)
        return self.loaded_checkpoints[key]

    def describe(self, model: LitClassifier, datamodule: MNISTDataModule, ckpt_path: str = "best") -> None:
        """Print what a checkpoint holds: network, dataset, epoch and step, best validation accuracy.

        Args:
            ckpt_path: ``best``, ``last`` (of the newest run) or a checkpoint file.
        """
        print(describe(summary(ckpt_path, self.checkpoint(ckpt_path), model, datamodule)))

    def serve(
        self,
        model: LitClassifier,
        datamodule: MNISTDataModule,
        ckpt_path: str = "best",
        host: str = "127.0.0.1",
        port: int = 8000,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        """Serve the model over HTTP until Ctrl-C or SIGTERM: ``POST /predict``, ``POST /predict/batch``,
        ``GET /health``, and FastAPI's ``/docs``. Needs the ``serve`` extra (FastAPI, uvicorn).

        Args:
            ckpt_path: ``best``, ``last`` (of the newest run) or a checkpoint file.
            host: the address to listen on; 127.0.0.1 keeps it on this machine.
            port: the port; 0 picks a free one (printed).
            max_upload_bytes: larger requests are refused with 413.
            max_image_pixels: images with more pixels are refused (422) before they are decoded.
        """
        from mnistlit.deploy import serve

        checkpoint = self.checkpoint(ckpt_path)
        model.load_state_dict(checkpoint["state_dict"])
        about = summary(ckpt_path, checkpoint, model, datamodule) | {"checkpoint": run_relative(ckpt_path)}
        classifier = serve.Classifier(
            model, datamodule.class_names, about, max_image_pixels, unsure_below=about["unsure_below"]
        )
        serve.run(serve.create_app(classifier, max_upload_bytes), host, port)

    def export(
        self,
        model: LitClassifier,
        datamodule: MNISTDataModule,
        ckpt_path: str = "best",
        format: Literal["both", "onnx", "pt2", "onnx-int8"] = "both",
        output: str | None = None,
        max_accuracy_drop: float = 0.001,
        calibration_images: int = 1000,
    ) -> None:
        """Write the network as ONNX (model.onnx) and torch.export (model.pt2), checked on the test set.

        Both take uint8 digits (batch, 28, 28) and return probabilities; each is loaded back and
        compared with the checkpoint on every test image before it gets its final name. ONNX
        needs the ``export`` extra (onnx, onnxscript, onnxruntime).

        Args:
            ckpt_path: ``best``, ``last`` (of the newest run) or a checkpoint file.
            format: ``onnx``, ``pt2``, ``both``, or ``onnx-int8``: model.onnx and model.int8.onnx,
                quantized by onnxruntime and calibrated on training digits.
            output: the folder to write into; by default ``export/`` in the checkpoint's run folder.
            max_accuracy_drop: how much test accuracy int8 may lose against fp32 ONNX (0.001 = 0.1%).
            calibration_images: how many training digits set int8's activation ranges.
        """
        from mnistlit.deploy import export, quantize

        checkpoint = self.checkpoint(ckpt_path)
        model.load_state_dict(checkpoint["state_dict"])
        about = summary(ckpt_path, checkpoint, model, datamodule)
        datamodule.prepare_data()
        datamodule.setup("test")
        calibration = None
        if format == "onnx-int8":
            datamodule.setup("fit")
            assert datamodule.train_set is not None
            train = datamodule.train_set.images.cpu()
            chosen = torch.randperm(
                len(train), generator=torch.Generator().manual_seed(quantize.CALIBRATION_SEED)
            )
            calibration = train[chosen[:calibration_images]]
        formats = {"both": ["onnx", "pt2"], "onnx-int8": ["onnx", "onnx-int8"]}.get(format, [format])
        written, report = export.export(
            model.net.cpu().float(),
            formats,
            Path(output) if output else export.default_folder(ckpt_path),
            export.metadata(about, datamodule.class_names, ckpt_path),
            datamodule.test_set.images.cpu(),
            datamodule.test_set.labels.cpu(),
            calibration,
            max_accuracy_drop,
        )
        print(f"exported {ckpt_path} ({about['net']}):")
        for path in written:
            print(f"  {path} ({path.stat().st_size / 1e6:.1f} MB)")
        print(report)
