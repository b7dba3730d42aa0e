"""The limit: a network's training FLOPs per epoch, and what this machine's cores can do at most.

`python benchmarks/flops.py` prints the seed Net's FLOPs per layer and the peak table; run.py
uses both to give each pipeline's achieved GFLOP/s and its fraction of the peak.
"""

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnistlit.core.nets import Net

TRAIN_IMAGES, VAL_IMAGES = 55_000, 5_000


def flops_per_image(net: nn.Module) -> tuple[float, float, dict[str, tuple[float, float]]]:
    """(training, inference) FLOPs per image and, per layer, (forward, backward) per image.

    Counted by torch's FlopCounterMode on one batch (matmuls and convolutions; the elementwise
    work, pooling and the optimizer are not counted and are small beside them).
    """
    batch = 128
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as forward:
        net(x)
    with FlopCounterMode(display=False) as both:
        nn.functional.cross_entropy(net(x), y).backward()
    names = [name for name in both.get_flop_counts() if name != "Global"]
    leaves = [name for name in names if not any(other.startswith(f"{name}.") for other in names)]
    layers = {}
    for name in leaves:
        fwd = sum(forward.get_flop_counts().get(name, {}).values())
        layers[name] = (fwd / batch, (sum(both.get_flop_counts()[name].values()) - fwd) / batch)
    return both.get_total_flops() / batch, forward.get_total_flops() / batch, layers


def epoch_flops(net: nn.Module) -> float:
    """FLOPs of one epoch: 55,000 training images forward and backward, 5,000 validated."""
    training, inference, _ = flops_per_image(net)
    return TRAIN_IMAGES * training + VAL_IMAGES * inference


def _best_gflops(work, flops: float, repeats: int = 20) -> float:
    work()  # warm-up: oneDNN picks and caches its kernel on the first call
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return flops / statistics.median(seconds) / 1e9


@torch.inference_mode()
def peak_gflops(dtype: torch.dtype, device: str = "cpu") -> dict[str, float]:
    """GFLOP/s of a large matmul and of a large convolution (channels_last, 3x3, 128 -> 128) in ``dtype``."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    b = torch.randn(2048, 2048, device=device, dtype=dtype)
    images = torch.randn(64, 128, 28, 28, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    conv = nn.Conv2d(128, 128, 3, padding=1).to(device, dtype, memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None

    def matmul() -> None:
        torch.mm(a, b)
        sync()

    def convolution() -> None:
        conv(images)
        sync()

    return {
        "matmul 2048²": _best_gflops(matmul, 2 * 2048**3),
        "conv 128→128 3×3": _best_gflops(convolution, 2 * 64 * 128 * 128 * 9 * 28 * 28),
    }


def main() -> None:
    training, inference, layers = flops_per_image(Net())
    print("seed Net, MFLOP per image (FlopCounterMode):\n")
    print("| layer | forward | backward |")
    print("|---|---:|---:|")
    for name, (fwd, back) in layers.items():
        print(f"| {name} | {fwd / 1e6:.2f} | {back / 1e6:.2f} |")
    print(f"| all layers | {inference / 1e6:.2f} | {(training - inference) / 1e6:.2f} |")
    print(f"\ntraining: {training / 1e6:.2f} MFLOP per image (forward and backward)")
    print(f"\none epoch: {epoch_flops(Net()) / 1e12:.3f} TFLOP\n")
    for dtype in (torch.float32, torch.bfloat16):
        print(dtype, {k: round(v) for k, v in peak_gflops(dtype).items()}, "GFLOP/s")


if __name__ == "__main__":
    main()
