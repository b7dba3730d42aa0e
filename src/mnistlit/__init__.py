"""mnistlit: MNIST trained the Lightning way (DataModule, LightningModule, LightningCLI)."""

from mnistlit.data import MNISTDataModule
from mnistlit.images import preprocess_image
from mnistlit.module import LitClassifier
from mnistlit.nets import Net, SpeedrunNet

__all__ = ["LitClassifier", "MNISTDataModule", "Net", "SpeedrunNet", "preprocess_image"]
