"""Classify images of handwritten digits with an exported model.onnx, without PyTorch.

    pip install onnxruntime numpy pillow
    pip install --no-deps .          # mnistlit itself, for its numpy-only preprocessing
    python examples/classify_onnx.py lightning_logs/version_0/export/model.onnx my_digits/*.png

Prints one line per image: file, label, probability and "unsure" where the probability is below
the threshold calibrated on the validation split (tab-separated); a file that cannot be read as a
digit is listed on stderr as skipped, with the reason, and the rest go on.
"""

import json
import sys

import numpy as np
import onnxruntime
from PIL import Image

from mnistlit.deploy.preprocess import mnist_digit  # the same MNIST-style preprocessing as `mnistlit predict`


def main(model_file: str, image_files: list[str]) -> None:
    session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    about = session.get_modelmeta().custom_metadata_map
    classes = json.loads(about["classes"])
    unsure_below = float(about.get("unsure_below") or 0)  # absent before mnistlit 0.3
    digits, read = [], []
    for file in image_files:
        try:
            with Image.open(file) as image:
                digits.append(mnist_digit(image))
            read.append(file)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # not an image, blank, too large
            print(f"skipped {file}: {' '.join(str(e).split())}", file=sys.stderr)
    if not digits:
        sys.exit("no image could be read")
    (probabilities,) = session.run(None, {"digits": np.stack(digits)})
    for file, p in zip(read, probabilities, strict=True):
        print(f"{file}\t{classes[p.argmax()]}\t{p.max():.4f}\t{'unsure' if p.max() < unsure_below else ''}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python examples/classify_onnx.py MODEL.onnx IMAGE [IMAGE ...]")
    main(sys.argv[1], sys.argv[2:])
