"""Where the augmentations lived before 0.2: checkpoints written then name ``mnistlit.augment.X``
in their datamodule's hyperparameters. New code: ``mnistlit.core.augment``."""

from mnistlit.core.augment import HandwritingShifts, RandomAffine

__all__ = ["HandwritingShifts", "RandomAffine"]
