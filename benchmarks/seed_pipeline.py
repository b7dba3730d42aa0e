"""The seed recipe's own pipeline, as its blog post writes it (with its typos fixed).

torchvision's MNIST dataset decoding one PIL image at a time, ToTensor, a DataLoader with
4 workers, and a loop that computes metrics and updates the tqdm bar with `.item()` on every
step. Same split, network, optimizer, LR schedule, batch size and seed as the others.
Prints one JSON line like plain_loop.py. fp32 only, as the seed runs.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchmetrics import Accuracy
from torchvision import datasets, transforms
from tqdm import tqdm

from mnistlit.core.batches import split_indices
from mnistlit.core.datasets import MNIST
from mnistlit.core.nets import Net
from mnistlit.runs.sources import ensure_files


def run_epoch(net, loader, loss_fn, optimizer=None) -> tuple[float, float]:
    """The seed's epoch: per-step loss and accuracy read back with .item() for the bar."""
    accuracy = Accuracy(task="multiclass", num_classes=10)
    total_loss, steps = 0.0, 0
    loop = tqdm(loader, total=len(loader))
    for features, labels in loop:
        preds = net(features)
        loss = loss_fn(preds, labels)
        if optimizer is not None:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        step_acc = accuracy(preds, labels).item()
        total_loss += loss.item()
        steps += 1
        loop.set_postfix(loss=loss.item(), acc=step_acc)
    return total_loss / steps, accuracy.compute().item()


def seed_loaders(data_dir: str, root: str) -> tuple[DataLoader, DataLoader, DataLoader]:
    """The seed's train/validation/test DataLoaders: torchvision's MNIST (read from ``data_dir``
    through links in ``root``), ToTensor, batch 128, 4 workers; mnistlit's split."""
    folder = ensure_files(MNIST, data_dir)
    raw = Path(root, "MNIST", "raw")
    raw.mkdir(parents=True)
    for name in MNIST.files:
        os.symlink((folder / name).resolve(), raw / name)
    train_set = datasets.MNIST(root, train=True, transform=transforms.ToTensor())
    test_set = datasets.MNIST(root, train=False, transform=transforms.ToTensor())
    train, val = split_indices(len(train_set), 5000, seed=42)
    return (
        DataLoader(Subset(train_set, train), batch_size=128, shuffle=True, num_workers=4),
        DataLoader(Subset(train_set, val), batch_size=128, shuffle=False, num_workers=4),
        DataLoader(test_set, batch_size=128, shuffle=False, num_workers=4),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()

    torch.manual_seed(42)
    with tempfile.TemporaryDirectory() as root:
        dl_train, dl_val, dl_test = seed_loaders(args.data_dir, root)
        net = Net()
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=15)
        epoch_seconds, val_accs = [], []
        for _ in range(args.epochs):
            started = time.perf_counter()
            net.train()
            run_epoch(net, dl_train, loss_fn, optimizer)
            scheduler.step()
            net.eval()
            with torch.no_grad():
                _, val_acc = run_epoch(net, dl_val, loss_fn)
            epoch_seconds.append(time.perf_counter() - started)
            val_accs.append(val_acc)
        net.eval()
        with torch.no_grad():
            _, test_acc = run_epoch(net, dl_test, loss_fn)
    print(json.dumps({"epoch_seconds": epoch_seconds, "val_accs": val_accs, "test_acc": test_acc}))


if __name__ == "__main__":
    main()
