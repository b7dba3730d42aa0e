"""mnistlit: MNIST trained the Lightning way (DataModule, LightningModule, LightningCLI).

``core/`` is the example to copy; ``runs/`` makes every run safe and visible; ``deploy/`` is the
model's life after training (docs/architecture.md).
"""

import importlib
from importlib.metadata import version

__version__ = version("mnistlit")

__all__ = [
    "LitClassifier",
    "MNISTDataModule",
    "Net",
    "SpeedrunNet",
    "StrongNet",
    "Trainer",
    "classify",
    "preprocess_image",
]

# Imported on first use, so that `python -m mnistlit` can set up its signal handling before
# torch and Lightning load (seconds on a small CPU).
_HOMES = {
    "LitClassifier": "mnistlit.core.module",
    "MNISTDataModule": "mnistlit.runs.data",
    "Net": "mnistlit.core.nets",
    "SpeedrunNet": "mnistlit.core.nets",
    "StrongNet": "mnistlit.core.nets",
    "Trainer": "mnistlit.runs.trainer",
    "classify": "mnistlit.deploy.images",
    "preprocess_image": "mnistlit.deploy.images",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mnistlit' has no attribute {name!r}")
