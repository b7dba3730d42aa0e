"""Turn a photo or scan of a handwritten digit into an MNIST-like 28x28 image.

The steps follow how MNIST itself was made: grey levels, light ink on a dark background,
the ink's bounding box scaled so its longer side is 20 pixels (aspect ratio kept), then
placed in a 28x28 field so that its centre of mass sits at the centre.
"""

import glob
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def preprocess_image(image: Image.Image) -> torch.Tensor:
    """A (28, 28) uint8 tensor, light ink on black, from a PIL image of any size and mode."""
    ink = _ink_intensity(image)
    rows, cols = np.nonzero(ink > 0.25 * ink.max())
    if rows.size == 0:
        raise ValueError("no ink found: the image is blank")
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = crop.shape
    scale = 20 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.asarray(
        Image.fromarray(np.uint8(crop * 255)).resize(size, Image.Resampling.LANCZOS), dtype=np.float64
    )
    canvas = np.zeros((28, 28))
    com_row, com_col = _centre_of_mass(digit)
    top = int(np.clip(round(13.5 - com_row), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(13.5 - com_col), 0, 28 - digit.shape[1]))
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return torch.from_numpy(np.clip(canvas, 0, 255).round().astype(np.uint8))


def _ink_intensity(image: Image.Image) -> np.ndarray:
    """Ink in [0, 1] (1 = most ink), whatever the mode, bit depth and polarity."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.getchannel("A"), dtype=np.float64)
        if alpha.max() - alpha.min() > 64:  # drawn on a transparent sheet: the alpha is the ink
            return alpha / alpha.max()
        image = image.convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        grey = np.asarray(image, dtype=np.float64)
    else:
        grey = np.asarray(image.convert("L"), dtype=np.float64)
    low, high = grey.min(), grey.max()
    if high - low < 1e-9:
        raise ValueError("no ink found: the image has a single colour")
    grey = (grey - low) / (high - low)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 0.5:  # dark ink on light paper, the usual case; MNIST is the reverse
        grey = 1 - grey
    background = np.median(grey)
    return np.clip(grey - background, 0, None) / max(1e-9, 1 - background)


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    total = image.sum()
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def image_files(pattern: str | Path) -> list[Path]:
    """The image files in a folder (by suffix), or the files a glob pattern matches."""
    path = Path(pattern)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file()]
    return sorted(files)


def load_digits(files: list[Path]) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """Preprocess every file; return the (N, 28, 28) images, the files used, and (file, reason) skipped."""
    images, used, skipped = [], [], []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(preprocess_image(image))
            used.append(file)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            skipped.append((file, " ".join(str(e).split())[:200]))
    stacked = torch.stack(images) if images else torch.zeros((0, 28, 28), dtype=torch.uint8)
    return stacked, used, skipped
