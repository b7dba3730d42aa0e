"""make bench-export: the exported files' speed against PyTorch eager, on this machine's CPU.

For Net and StrongNet (freshly initialised: speed does not depend on the weights), each as
mnistlit export writes it (uint8 digits in, probabilities out): per-image latency at batch 1
(median of many single calls) and images/s at batch 256 (median of repeated batches), for
PyTorch eager (the network as mnistlit runs it), the reloaded .pt2 and onnxruntime (CPU
provider). Also what examples/classify_onnx.py spends per image file before the network:
decoding a 280x280 PNG and mnist_digit.
"""

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image
from run import cpu_name
from serve import drawn_seven

from mnistlit.core.inputs import DigitProbabilities
from mnistlit.core.nets import Net, StrongNet
from mnistlit.deploy.export import onnx_bytes, pt2_bytes
from mnistlit.deploy.preprocess import mnist_digit


def median_seconds(call, repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):  # warm-up
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def runners(net: torch.nn.Module, folder: Path) -> dict:
    """name -> function of a uint8 numpy batch, for eager PyTorch and the two exported files."""
    eager = DigitProbabilities(net.to(memory_format=torch.channels_last)).eval()
    (folder / "model.onnx").write_bytes(onnx_bytes(eager, {}))
    (folder / "model.pt2").write_bytes(pt2_bytes(eager, {}))
    pt2 = torch.export.load(folder / "model.pt2").module()
    session = onnxruntime.InferenceSession(folder / "model.onnx", providers=["CPUExecutionProvider"])

    def in_torch(module):
        def run(digits: np.ndarray):
            with torch.inference_mode():
                return module(torch.from_numpy(digits))

        return run

    return {
        "PyTorch eager": in_torch(eager),
        ".pt2 (torch.export)": in_torch(pt2),
        "onnxruntime": lambda digits: session.run(None, {"digits": digits}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300, help="single-image calls per row")
    args = parser.parse_args()
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}\n")  # fmt: skip
    print("| network | runtime | batch 1: ms per image | batch 256: images/s |")
    print("|---|---|---:|---:|")
    one = np.random.default_rng(0).integers(0, 256, (1, 28, 28), dtype=np.uint8)
    batch = np.random.default_rng(1).integers(0, 256, (256, 28, 28), dtype=np.uint8)
    for net_class in (Net, StrongNet):
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as folder:
            for name, run in runners(net_class().eval(), Path(folder)).items():
                latency = median_seconds(lambda run=run: run(one), args.repeats)
                per_batch = median_seconds(lambda run=run: run(batch), max(20, args.repeats // 5))
                print(f"| {net_class.__name__} | {name} | {1000 * latency:.2f} | {256 / per_batch:,.0f} |",
                      flush=True)  # fmt: skip
    png = drawn_seven()
    decode = median_seconds(lambda: mnist_digit(Image.open(io.BytesIO(png))), args.repeats)
    print(f"\nexamples/classify_onnx.py before the network: {1000 * decode:.2f} ms per 280x280 PNG "
          "(decode + mnist_digit)")  # fmt: skip


if __name__ == "__main__":
    main()
