"""The callback that publishes a run's pictures: training digits, confusion matrix, mistakes, HParams."""

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from mnistlit.core.data import DigitData
from mnistlit.core.inputs import unit_range
from mnistlit.runs import plots, trackers
from mnistlit.runs.folders import run_folder


def as_augmented(digits: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """uint8 digits (N, 28, 28) through a training augmentation, drawn from a forked RNG: the
    picture is the same for every run and the training's own random draws are left as they were."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return augment(unit_range(digits))[:, 0]


class RunPictures(L.Callback):
    """The pictures a user opens first, as PNG files in the run folder and in every tracker
    (TensorBoard, MLflow, W&B).

    At fit start: nine training digits with their labels (the seed's grid; with augmentation,
    the same nine again as augmented for training) and a TensorBoard
    layout that puts train and validation curves in one chart. At the end of fit and test:
    the hyperparameters with the final metrics (TensorBoard's HParams tab). At the end of
    test: the confusion matrix and the most confident mistakes.
    """

    worst_count = 16

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = self._tensorboard(trainer)
        if experiment is not None:
            layout = {
                "train vs val": {
                    "loss": ["Multiline", ["train_loss", "val_loss"]],
                    "accuracy": ["Multiline", ["train_acc", "val_acc"]],
                }
            }
            experiment.add_custom_scalars(layout)
        data: DigitData = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's connectors at run time
        dataset = data.train_set
        if dataset is not None:
            names = data.class_names
            images = dataset.images[:9].cpu()
            titles = [f"label = {names[int(label)]}" for label in dataset.labels[:9]]
            augment = getattr(data, "augment", None)
            if augment is None:
                self._publish(trainer, "train_digits", lambda: plots.digit_grid(images, titles))
            else:  # the same digits again, as the network sees them in training
                images = torch.cat([images, as_augmented(images, augment)])
                titles += ["as trained"] * 9
                self._publish(trainer, "train_digits", lambda: plots.digit_grid(images, titles, columns=9))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score = getattr(trainer.checkpoint_callback, "best_model_score", None)
        if score is not None:
            self._log_hparams(trainer, pl_module, {"hp/best_val_acc": float(score)})

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        classes = len(trainer.datamodule.class_names)  # type: ignore[attr-defined]  # a DigitData
        self._counts = torch.zeros(classes, classes, dtype=torch.long, device=pl_module.device)
        # confidence, image, label, prediction
        self._worst: tuple[torch.Tensor, ...] = (torch.empty(0, device=pl_module.device),) * 4

    def on_test_batch_end(
        self,
        trainer,
        pl_module,
        outputs: torch.Tensor | Mapping[str, Any] | None,
        batch,
        batch_idx,
        dataloader_idx=0,
    ):
        assert isinstance(outputs, torch.Tensor), "LitClassifier.test_step returns the probabilities"
        images, labels = batch
        confidence, predicted = outputs.max(dim=1)
        classes = self._counts.shape[0]
        self._counts += torch.bincount(labels * classes + predicted, minlength=classes**2).view(classes, -1)
        wrong = predicted != labels
        pool = [
            torch.cat([kept, new[wrong]])
            for kept, new in zip(self._worst, (confidence, images, labels, predicted), strict=True)
        ]
        order = pool[0].argsort(descending=True)[: self.worst_count]
        self._worst = tuple(t[order] for t in pool)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = pl_module.all_gather(self._counts)
        assert isinstance(counts, torch.Tensor)
        counts = counts.sum(0) if counts.dim() == 3 else counts
        names = trainer.datamodule.class_names  # type: ignore[attr-defined]  # a DigitData
        self._publish(trainer, "confusion_matrix", lambda: plots.confusion_matrix(counts, names))
        confidence, images, labels, predicted = (t.cpu() for t in self._worst)
        titles = [
            f"true {names[int(t)]}, pred {names[int(p)]}\n({c:.2f})"
            for t, p, c in zip(labels, predicted, confidence, strict=True)
        ]
        if titles:
            self._publish(trainer, "misclassified", lambda: plots.digit_grid(images[:, 0], titles, columns=4))
        metrics = {f"hp/{k}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test_")}
        self._log_hparams(trainer, pl_module, metrics)

    @staticmethod
    def _tensorboard(trainer: L.Trainer):
        return trainer.logger.experiment if isinstance(trainer.logger, TensorBoardLogger) else None

    def _publish(self, trainer: L.Trainer, name: str, draw: Callable[[], Figure]) -> None:
        """Draw the figure (on rank 0 only) into ``<name>.png`` in the run folder and every tracker."""
        folder = run_folder(trainer)
        if folder is None:
            return
        image = plots.pixels(draw())
        folder.mkdir(parents=True, exist_ok=True)
        plots.save_png(image, folder / f"{name}.png")
        trackers.publish_image(trainer, name, image, folder / f"{name}.png")

    @staticmethod
    def _log_hparams(trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float]) -> None:
        if isinstance(trainer.logger, TensorBoardLogger) and metrics:
            trainer.logger.log_hyperparams(dict(pl_module.hparams), metrics)
