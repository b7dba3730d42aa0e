"""The input convention, defined once: uint8 digits -> network input -> probabilities.

Datasets, image files and clients all hand over what MNIST stores: uint8 digits (B, 28, 28),
light ink on black. Training, ``predict``, ``serve``, ``export`` and the benchmarks turn them
into network input with ``network_input`` and read answers with ``DigitProbabilities``.
"""

import torch
from torch import Tensor, nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def unit_range(digits: Tensor) -> Tensor:
    """uint8 digits (B, 28, 28) as float (B, 1, 28, 28) in [0, 1]: what augmentation works on."""
    return digits.unsqueeze(1).float().div_(255)


def standardize(images: Tensor) -> Tensor:
    """[0, 1] images scaled with MNIST's mean and standard deviation, in the channels_last layout
    every network here is kept in (faster convolutions on CPUs)."""
    return images.sub_(MNIST_MEAN).div_(MNIST_STD).contiguous(memory_format=torch.channels_last)


def network_input(digits: Tensor) -> Tensor:
    """uint8 digits (B, 28, 28) as the normalised (B, 1, 28, 28) float input every network takes."""
    return standardize(unit_range(digits))


class DigitProbabilities(nn.Module):
    """A network with the input scaling before it and the softmax after it: uint8 digits in,
    class probabilities out. ``export`` writes exactly this graph."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, digits: Tensor) -> Tensor:
        return self.net(network_input(digits)).softmax(1)
