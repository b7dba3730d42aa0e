"""The hand-written PyTorch loop mnistlit is measured against.

The seed's script style done right: the same data, split, network, optimizer, LR schedule,
batch size and seed as configs/base.yaml; batches cut from uint8 tensors on the device and
normalised there; channels_last like mnistlit; train and validation loss/accuracy
accumulated on the device and read once per epoch. No progress bar, logger or checkpoints.
With --precision bf16-mixed, forward and loss run under torch.autocast(bfloat16), as Lightning's
bf16-mixed does. Prints one JSON line: seconds and validation accuracy per epoch, test accuracy.
"""

import argparse
import contextlib
import functools
import json
import time

import torch
import torch.nn.functional as F

from mnistlit.core.batches import split_indices
from mnistlit.core.datasets import MNIST, read_idx
from mnistlit.core.inputs import MNIST_MEAN, MNIST_STD
from mnistlit.core.nets import Net
from mnistlit.runs.sources import ensure_files


def normalise(images: torch.Tensor) -> torch.Tensor:
    x = images.unsqueeze(1).float().div_(255).sub_(MNIST_MEAN).div_(MNIST_STD)
    return x.contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def evaluate(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, autocast):
    """(loss, accuracy) over the whole set."""
    net.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for start in range(0, len(labels), batch_size):
        y = labels[start : start + batch_size]
        with autocast():
            logits = net(normalise(images[start : start + batch_size]))
        loss_sum += F.cross_entropy(logits, y) * len(y)
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / len(labels), correct.item() / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    args = parser.parse_args()

    torch.manual_seed(42)
    device = torch.device(args.device)
    if args.precision == "bf16-mixed":
        autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    folder = ensure_files(MNIST, args.data_dir)
    images = read_idx(folder / MNIST.train_images).to(device)
    labels = read_idx(folder / MNIST.train_labels).long().to(device)
    train, val = split_indices(len(labels), 5000, seed=42)
    train_x, train_y, val_x, val_y = images[train], labels[train], images[val], labels[val]
    test_x = read_idx(folder / MNIST.test_images).to(device)
    test_y = read_idx(folder / MNIST.test_labels).long().to(device)

    net = Net().to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=15)
    batch_size = 128
    epoch_seconds, val_accs = [], []
    for _ in range(args.epochs):
        started = time.perf_counter()
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        order = torch.randperm(len(train_y), device=device)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            x, y = normalise(train_x[index]), train_y[index]
            with autocast():
                logits = net(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
        scheduler.step()
        train_loss, train_acc = loss_sum.item() / len(order), correct.item() / len(order)
        val_loss, val_acc = evaluate(net, val_x, val_y, batch_size, autocast)
        epoch_seconds.append(time.perf_counter() - started)
        val_accs.append(val_acc)
        print(
            f"epoch {len(epoch_seconds) - 1}: train_loss {train_loss:.4f} train_acc {train_acc:.4f} "
            f"val_loss {val_loss:.4f} val_acc {val_acc:.4f} {epoch_seconds[-1]:.1f}s",
            flush=True,
        )
    _, test_acc = evaluate(net, test_x, test_y, batch_size, autocast)
    print(json.dumps({"epoch_seconds": epoch_seconds, "val_accs": val_accs, "test_acc": test_acc}))


if __name__ == "__main__":
    main()
