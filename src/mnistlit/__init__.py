"""mnistlit: MNIST trained the Lightning way (DataModule, LightningModule, LightningCLI)."""

from mnistlit.data import MNISTDataModule
from mnistlit.module import LitClassifier
from mnistlit.nets import Net

__all__ = ["LitClassifier", "MNISTDataModule", "Net"]
