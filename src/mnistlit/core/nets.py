"""Networks for 1x28x28 digits. A new architecture is a class here and a config, nothing else."""

from torch import Tensor, nn


class Net(nn.Module):
    """The seed recipe's network, kept exactly as published (same layers, same state_dict keys).

    ``num_classes`` other than 10 changes only the size of the last layer.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.Conv2d(in_channels=1, out_channels=32, kernel_size=3),
                nn.MaxPool2d(kernel_size=2, stride=2),
                nn.Conv2d(in_channels=32, out_channels=64, kernel_size=5),
                nn.MaxPool2d(kernel_size=2, stride=2),
                nn.Dropout2d(p=0.1),
                nn.AdaptiveMaxPool2d((1, 1)),
                nn.Flatten(),
                nn.Linear(64, 32),
                nn.ReLU(),
                nn.Linear(32, num_classes),
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SpeedrunNet(nn.Module):
    """A small, fast CNN for configs/speedrun.yaml: conv 5x5/16, conv 3x3/32, fc 256 (213k parameters).

    Most parameters sit in the fully connected layer, which is cheap on a CPU; the two
    convolutions stay narrow because they dominate the time of a step (docs/results.md).
    Each ReLU comes after its max-pool: the same function (ReLU and max commute), on a quarter
    of the values, which made a bf16 training step 15% faster on a 2-core CPU (docs/speed.md).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 5 * 5, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class StrongNet(nn.Module):
    """A compact CNN with BatchNorm for configs/strong.yaml (132k parameters).

    conv 5x5/32 → pool → conv 3x3/64 ×2 → pool → conv 3x3/128 → global average → fc 10.
    Pooling early keeps the widest convolutions at 12x12 and 6x6, where they are cheap on a CPU.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, 32, 5),  # 28 -> 24
            nn.MaxPool2d(2),  # 12
            conv_bn_relu(32, 64, 3, padding=1),
            conv_bn_relu(64, 64, 3, padding=1),
            nn.MaxPool2d(2),  # 6
            conv_bn_relu(64, 128, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
