"""The seed's third loop: torchkeras' KerasModel.fit on the seed's DataLoaders and Net.

As the seed writes it (KerasModel with an accuracy metric, Adam lr 0.01, monitor val_acc), with
the same cosine schedule as the other pipelines (KerasModel steps a scheduler every batch, so its
length is 15 epochs of steps) and early stopping out of reach so that every run does --epochs.
KerasModel itself clips gradients to norm 1 and reads every step's metrics back with .item().
Prints one JSON line like plain_loop.py: seconds and validation accuracy per epoch, test accuracy.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from seed_pipeline import seed_loaders
from torch import nn
from torchkeras import KerasModel
from torchmetrics import Accuracy

from mnistlit.core.nets import Net


class EpochClock:
    """A torchkeras callback: the seconds from the fit's start to each validation's end."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ends: list[float] = []

    def on_validation_epoch_end(self, model: KerasModel) -> None:
        self.ends.append(time.perf_counter() - self.started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()

    torch.manual_seed(42)
    with tempfile.TemporaryDirectory() as root:
        dl_train, dl_val, dl_test = seed_loaders(args.data_dir, root)
        net = Net()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=15 * len(dl_train))
        model = KerasModel(
            net=net,
            loss_fn=nn.CrossEntropyLoss(),
            metrics_dict={"acc": Accuracy(task="multiclass", num_classes=10)},
            optimizer=optimizer,
            lr_scheduler=scheduler,
        )
        clock = EpochClock()
        history = model.fit(
            train_data=dl_train,
            val_data=dl_val,
            epochs=args.epochs,
            ckpt_path=str(Path(root, "checkpoint.pt")),
            patience=args.epochs + 1,
            monitor="val_acc",
            mode="max",
            callbacks=[clock],
            plot=False,
            cpu=True,
        )
        test_acc = model.evaluate(dl_test, quiet=True)["val_acc"]
    epoch_seconds = [b - a for a, b in zip([0.0, *clock.ends], clock.ends, strict=False)]
    print(
        json.dumps(
            {"epoch_seconds": epoch_seconds, "val_accs": list(history["val_acc"]), "test_acc": test_acc}
        )
    )


if __name__ == "__main__":
    main()
