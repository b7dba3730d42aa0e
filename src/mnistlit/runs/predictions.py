"""What predict leaves in the run folder: predictions.csv and a contact sheet of the inputs."""

import csv
from pathlib import Path

import lightning as L
import torch

from mnistlit.core.data import DigitData
from mnistlit.runs import plots
from mnistlit.runs.folders import run_folder


class PredictionFiles(L.Callback):
    """Writes ``predictions.csv`` (item, target, prediction, probability, top3, unsure) into the
    run folder, and ``predictions.png``: the first inputs as the network saw them, with predictions.

    ``item`` is the image file when predicting ``--data.predict_dir``, else the test-set index;
    targets and predictions are the dataset's class names (digits for MNIST). ``unsure`` is
    ``yes`` where the probability is below the model's ``unsure_below`` (runs/unsure.py), empty
    for a checkpoint that has none.
    """

    sheet_size = 100

    def __init__(self, filename: str = "predictions.csv") -> None:
        self.filename = filename
        self.path: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = run_folder(trainer)
        self.path = None if folder is None else (folder / self.filename).resolve()
        self._sheet: list[tuple[torch.Tensor, str]] = []
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._open("w") as f:
            csv.writer(f).writerow(["item", "target", "prediction", "probability", "top3", "unsure"])

    def _open(self, mode: str):
        # File names that are not valid UTF-8 reach Python as surrogate escapes; written back
        # the same way, the CSV holds the name's original bytes.
        assert self.path is not None, "on_predict_start chose the file"
        return open(self.path, mode, newline="", encoding="utf-8", errors="surrogateescape")

    def on_predict_batch_end(
        self, trainer, pl_module, prediction: torch.Tensor, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.path is None:
            return
        data: DigitData = trainer.datamodule
        items, classes = data.predict_items, data.class_names
        indices = trainer.predict_dataloaders.indices_of(batch_idx).tolist()
        names = [str(items[i]) if items is not None else str(i) for i in indices]
        top_p, top_k = (t.tolist() for t in prediction.topk(min(3, prediction.shape[1]), dim=1))
        targets = ["" if t < 0 else classes[t] for t in batch[1].tolist()]
        threshold = getattr(pl_module, "unsure_below", None)
        unsure = ["" if threshold is None else "yes" if p[0] < threshold else "no" for p in top_p]
        with self._open("a") as f:
            csv.writer(f).writerows(
                (
                    name,
                    target,
                    classes[k[0]],
                    f"{p[0]:.6f}",
                    " ".join(f"{classes[c]}:{q:.4f}" for c, q in zip(k, p, strict=True)),
                    flag,
                )
                for name, target, k, p, flag in zip(names, targets, top_k, top_p, unsure, strict=True)
            )
        room = self.sheet_size - len(self._sheet)
        for image, name, k, p, flag in list(zip(batch[0], names, top_k, top_p, unsure, strict=True))[:room]:
            shown = Path(name).name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:16]
            doubt = ", unsure" if flag == "yes" else ""
            self._sheet.append((image[0].cpu(), f"{shown}\n-> {classes[k[0]]} ({p[0]:.2f}{doubt})"))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.path is None:
            return
        print(f"predictions written to {self.path}")
        if self._sheet:
            images = torch.stack([image for image, _ in self._sheet])
            titles = [title for _, title in self._sheet]
            figure = plots.digit_grid(images, titles, columns=min(10, len(titles)))
            plots.save(figure, self.path.with_suffix(".png"))
            print(f"contact sheet: {self.path.with_suffix('.png')}")
