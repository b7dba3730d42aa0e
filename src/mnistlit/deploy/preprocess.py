"""Turn a photo or scan of a handwritten digit into an MNIST-like 28x28 image.

The steps follow how MNIST itself was made: grey levels, light ink on a dark background,
the ink's bounding box scaled so its longer side is 20 pixels (aspect ratio kept), then
placed in a 28x28 field so that its centre of mass sits where MNIST's do.

Only numpy and Pillow: a deployment without PyTorch (examples/classify_onnx.py) uses it as it is.
"""

import math

import numpy as np
from PIL import Image, ImageOps

# Larger images are shrunk before any float copy is made: the digit ends up 20 pixels high anyway.
WORKING_SIDE = 1024
# Where MNIST's digits have their centre of mass (row and column, 0-based pixel indices): 14.0,
# not the field's middle 13.5. Measured over its test set; centring at 13.5 moved every digit
# half a pixel up and left of what the networks were trained on (docs/handwriting.md).
MNIST_CENTRE = 14.0


def mnist_digit(image: Image.Image) -> np.ndarray:
    """A (28, 28) uint8 array, light ink on black, from a PIL image of any size and mode."""
    ink = _ink_intensity(image)
    rows, cols = np.nonzero(ink > 0.25 * ink.max())
    if rows.size == 0:
        raise ValueError("no ink found: the image is blank")
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = crop.shape
    if is_a_dot(crop > 0.25 * ink.max(), ink.shape):
        raise ValueError("too little ink to be a digit (a dot?): draw a digit")
    scale = 20 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.asarray(
        Image.fromarray(np.uint8(crop * 255)).resize(size, Image.Resampling.LANCZOS), dtype=np.float64
    )
    canvas = np.zeros((28, 28))
    com_row, com_col = _centre_of_mass(digit)
    top = int(np.clip(round(MNIST_CENTRE - com_row), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(MNIST_CENTRE - com_col), 0, 28 - digit.shape[1]))
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.clip(canvas, 0, 255).round().astype(np.uint8)


def is_a_dot(ink: np.ndarray, image_shape: tuple[int, ...]) -> bool:
    """Whether the ink (a mask cropped to its bounding box) is a dot or a speck, not a digit: small
    beside the image (under a tenth of its longer side), about as wide as tall, and filling most
    of its box, as a tap on the drawing pad does. Scaled up to 20 pixels like a digit, such a dot
    was read as a confident 0. A small digit in a large photo is strokes, which fill little of
    their box; a low-resolution scan's digit fills its image."""
    height, width = ink.shape
    small = max(height, width) < 0.1 * max(image_shape)
    return small and max(height, width) <= 2 * min(height, width) and ink.mean() > 0.5


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
