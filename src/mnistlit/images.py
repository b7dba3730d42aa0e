"""Turn a photo or scan of a handwritten digit into an MNIST-like 28x28 image.

The steps follow how MNIST itself was made: grey levels, light ink on a dark background,
the ink's bounding box scaled so its longer side is 20 pixels (aspect ratio kept), then
placed in a 28x28 field so that its centre of mass sits at the centre.
"""

import glob
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnistlit.errors import one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Well under PIL's own bomb limit (179 MP): a 40 MP RGBA image decodes into 160 MB.
MAX_IMAGE_PIXELS = 40_000_000
# Larger images are shrunk before any float copy is made: the digit ends up 20 pixels high anyway.
WORKING_SIDE = 1024


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
    image = _shrunk(ImageOps.exif_transpose(image))
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


def _shrunk(image: Image.Image) -> Image.Image:
    """The image reduced by a whole factor until its longer side is at most WORKING_SIDE."""
    factor = math.ceil(max(image.size) / WORKING_SIDE)
    if factor <= 1:
        return image
    if image.mode in ("1", "P"):
        image = image.convert("RGBA" if image.mode == "P" else "L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    return image.reduce(factor)


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    total = image.sum()
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def image_files(pattern: str | Path) -> list[Path]:
    """The files to predict: a folder's entries (image suffixes, and other files to report as
    skipped), one file named literally (even if its name looks like a glob), or a glob's matches."""
    path = Path(pattern)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES or p.is_file()]
    elif path.exists() or path.is_symlink():
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(str(pattern), recursive=True) if not Path(p).is_dir()]
    return sorted(files)


def load_digits(
    files: list[Path], max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """Preprocess every file; return the (N, 28, 28) images, the files used, and (file, reason) skipped.

    Only regular files with an image suffix are opened (a FIFO would block forever), and an
    image's size is read from its header and checked against ``max_pixels`` before it is decoded.
    """
    images, used, skipped = [], [], []
    for file in files:
        if not file.is_file():
            skipped.append((file, "not a regular file"))
            continue
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((file, f"not an image file name ({', '.join(IMAGE_SUFFIXES)})"))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(file) as image:
                    if image.width * image.height > max_pixels:
                        raise ValueError(
                            f"{image.width}x{image.height} is over the limit of {max_pixels:,} pixels "
                            "(data.max_image_pixels)"
                        )
                    images.append(preprocess_image(image))
            used.append(file)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            skipped.append((file, one_line(e, 200)))
    stacked = torch.stack(images) if images else torch.zeros((0, 28, 28), dtype=torch.uint8)
    return stacked, used, skipped
