"""mnistlit: MNIST trained the Lightning way (DataModule, LightningModule, LightningCLI)."""

import importlib

__all__ = ["LitClassifier", "MNISTDataModule", "Net", "SpeedrunNet", "preprocess_image"]

# Imported on first use, so that `python -m mnistlit` can set up its signal handling before
# torch and Lightning load (seconds on a small CPU).
_HOMES = {
    "LitClassifier": "mnistlit.module",
    "MNISTDataModule": "mnistlit.data",
    "Net": "mnistlit.nets",
    "SpeedrunNet": "mnistlit.nets",
    "preprocess_image": "mnistlit.images",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mnistlit' has no attribute {name!r}")
