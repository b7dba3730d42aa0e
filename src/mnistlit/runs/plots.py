"""Drawing the figures: digit grids, learning curves, confusion matrix (matplotlib, no screen).

Figures are made without pyplot, so drawing them changes no global backend: a notebook's own
plots still show inline.
"""

import io
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from mnistlit.core.errors import MnistlitError
from mnistlit.files import atomic_write


def new_figure(width: float, height: float) -> Figure:
    """A figure of that size in inches, drawn by Agg: no window, no pyplot state to free."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def digit_grid(images: torch.Tensor, titles: list[str], columns: int = 3) -> Figure:
    """Images (N, 28, 28), any dtype or scale, each with a title, on a grid (the seed's 3x3 plot)."""
    rows = max(1, -(-len(images) // columns))
    figure = new_figure(2.2 * columns, 2.6 * rows)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, title in zip(axes.flat, images.float().cpu(), titles, strict=False):
        ax.imshow(image.numpy(), cmap="gray")
        ax.set_title(title, fontsize=9, parse_math=False)  # file names may hold $
    # Fixed margins (a title's height is 0.3 in): tight_layout would draw the whole figure once
    # more to measure it: 0.4 s of a run's start for 18 digits on a 2-vCPU AMD EPYC Zen 3.
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.3 / (2.6 * rows), hspace=0.15)
    return figure


def learning_curves(rows: list[dict[str, float]]) -> Figure:
    """Loss and accuracy per epoch, train against validation, best validation epoch marked."""
    epochs = [int(r["epoch"]) for r in rows]
    best = max(rows, key=lambda r: -1 if math.isnan(r["val_acc"]) else r["val_acc"])
    figure = new_figure(10, 4)
    loss_ax, acc_ax = figure.subplots(1, 2)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        ax.plot(epochs, [r[f"train_{metric}"] for r in rows], "o-", label=f"train_{metric}")
        ax.plot(epochs, [r[f"val_{metric}"] for r in rows], "o-", label=f"val_{metric}")
        ax.axvline(best["epoch"], color="grey", linestyle="--", label=f"best epoch ({int(best['epoch'])})")
        ax.set_xlabel("epoch")
        ax.set_title("loss" if metric == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    return figure


def confusion_matrix(counts: torch.Tensor, class_names: list[str]) -> Figure:
    """Counts (true class x predicted class), with the number in every non-empty cell."""
    counts = counts.cpu()
    figure = new_figure(7, 6)
    ax = figure.subplots()
    image = ax.imshow(counts.numpy(), cmap="Blues")
    figure.colorbar(image, ax=ax)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45 if max(map(len, class_names)) > 2 else 0)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = counts.diag().sum().item() / max(1, counts.sum().item())
    ax.set_title(f"confusion matrix (accuracy {accuracy:.4f})")
    threshold = counts.max().item() / 2
    for true in ticks:
        for predicted in ticks:
            if (value := int(counts[true, predicted])) > 0:
                color = "white" if value > threshold else "black"
                ax.text(predicted, true, str(value), ha="center", va="center", fontsize=7, color=color)
    figure.tight_layout()
    return figure


def pixels(figure: Figure) -> np.ndarray:
    """The figure drawn once, as RGB pixels (H, W, 3) at 100 dpi: a PNG and every tracker take
    these, instead of drawing the figure once each."""
    figure.set_dpi(100)
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg), "made by new_figure"
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_bytes(image: np.ndarray) -> bytes:
    """RGB pixels as the bytes of a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return buffer.getvalue()


def save_png(image: np.ndarray, path: Path) -> None:
    """Write RGB pixels as PNG, atomically: a viewer refreshing it never sees half a file."""
    try:
        atomic_write(path, png_bytes(image))
    except OSError as e:
        raise MnistlitError(f"could not write {path}: {e.strerror or e}") from e


def save(figure: Figure, path: Path) -> None:
    """Write the figure as PNG and free it."""
    save_png(pixels(figure), path)
