"""``mnistlit.MNISTDataModule``: the core DataModule, plus what a tool needs around it.

It fetches and verifies the dataset's files (``sources.ensure_files``) before reading them,
and ``predict`` can read the user's own image files instead of the test set.
"""

import sys
from pathlib import Path

import torch

from mnistlit.core import data
from mnistlit.core.batches import InMemoryDigits
from mnistlit.core.errors import MnistlitError
from mnistlit.deploy.images import MAX_IMAGE_PIXELS, image_files, load_digits
from mnistlit.runs.sources import ensure_files


class MNISTDataModule(data.MNISTDataModule):
    """MNIST (or any MNIST-format dataset), fetched and verified, for every stage.

    Args:
        predict_dir: images to predict instead of the test set: a folder (PNG, JPEG, BMP,
            GIF, TIFF, WebP), one file, or a glob pattern. Each is turned into an MNIST-like
            digit first.
        max_image_pixels: images with more pixels are skipped before they are decoded.
        *args, **kwargs: the core ``MNISTDataModule``'s arguments (data_dir, batch_size,
            val_size, split_seed, dataset, augment).
    """

    def __init__(
        self, *args, predict_dir: str | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.predict_dir = predict_dir
        self.max_image_pixels = max_image_pixels

    def prepare_data(self) -> None:
        if self.trainer is not None and self.trainer.predicting and self.predict_dir is not None:
            return  # predicting the user's own images needs no dataset
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise MnistlitError(f"data.data_dir {self.data_dir} is a file, not a folder")
        inside = self.data_dir / self.dataset.name
        if not inside.exists() and all((self.data_dir / name).is_file() for name in self.dataset.files):
            raise MnistlitError(
                f"data.data_dir {self.data_dir} is the {self.dataset.name} folder itself; give the folder "
                f"that holds it: --data.data_dir {self.data_dir.parent}"
            )
        ensure_files(self.dataset, self.data_dir)

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.predict_dir is not None:
            self.predict_set = self._images_to_predict(self.predict_dir)
        else:
            super().setup(stage)

    def _images_to_predict(self, pattern: str) -> InMemoryDigits:
        files = image_files(pattern)
        if not files and not Path(pattern).exists():
            raise MnistlitError(f"data.predict_dir {pattern}: no such file or folder, and no file matches it")
        images, used, skipped = load_digits(files, self.max_image_pixels)
        for file, reason in skipped:
            print(f"mnistlit: skipped {file}: {reason}", file=sys.stderr)
        if not used:
            raise MnistlitError(f"data.predict_dir {pattern}: no images that could be read")
        self.predict_items = [str(file) for file in used]
        return InMemoryDigits(images, torch.full((len(used),), -1))
