"""Image files for ``predict`` and ``serve``: which files to read, read safely, made MNIST-like."""

import glob
import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from mnistlit.core.errors import one_line
from mnistlit.core.inputs import DigitProbabilities
from mnistlit.core.module import LitClassifier
from mnistlit.deploy.preprocess import mnist_digit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Well under PIL's own bomb limit (179 MP): a 40 MP RGBA image decodes into 160 MB.
MAX_IMAGE_PIXELS = 40_000_000
GONE = "no longer there (deleted or moved while predict ran)"


def preprocess_image(image: Image.Image) -> torch.Tensor:
    """A (28, 28) uint8 tensor, light ink on black, from a PIL image of any size and mode."""
    return torch.from_numpy(mnist_digit(image))


@torch.inference_mode()
def classify(model: LitClassifier, image: Image.Image) -> tuple[int, float]:
    """The digit in a PIL image (a photo or scan of handwriting) and its probability, by a
    LitClassifier."""
    net = model.net.eval()
    parameter = next(net.parameters())
    digits = preprocess_image(image)[None].to(parameter.device)
    probability, predicted = DigitProbabilities(net)(digits).max(1)
    return int(predicted), float(probability)


def allow_pixels(max_pixels: int) -> None:
    """Let Pillow open images up to ``max_pixels``: its own bomb check refuses twice its
    ``MAX_IMAGE_PIXELS`` (179 MP) before ours is asked, so a larger cap would have no effect. A
    process-wide setting of Pillow's, only ever raised; our cap still applies to every image."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


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
    allow_pixels(max_pixels)
    images, used, skipped = [], [], []
    for file in files:
        if not file.exists():
            gone = "a link to a missing file" if file.is_symlink() else GONE
            skipped.append((file, gone))
            continue
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
        except FileNotFoundError:
            skipped.append((file, GONE))
        except Image.DecompressionBombError:  # over twice Pillow's own limit: refused before our check
            skipped.append((file, f"over the limit of {max_pixels:,} pixels (data.max_image_pixels)"))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            skipped.append((file, one_line(e, 200)))
    stacked = torch.stack(images) if images else torch.zeros((0, 28, 28), dtype=torch.uint8)
    return stacked, used, skipped
