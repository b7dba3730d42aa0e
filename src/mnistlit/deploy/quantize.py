"""int8: the exported ONNX model quantized statically with onnxruntime (QDQ), calibrated on training
digits, and measured against the fp32 ONNX model on the whole test set before it gets its name."""

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistlit.core.errors import MnistlitError

INPUT = "digits"
CALIBRATION_SEED = 0  # which training digits calibrate: recorded in the file's metadata
CALIBRATION_BATCH = 100


def int8_bytes(fp32: bytes, calibration: np.ndarray, metadata: dict[str, str]) -> bytes:
    """``fp32`` (an ONNX model) quantized: per-channel int8 weights (7 bits used) and uint8
    activations whose ranges the ``calibration`` digits (uint8, N x 28 x 28) set."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Digits(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // CALIBRATION_BATCH)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    with tempfile.TemporaryDirectory(prefix="mnistlit-int8-") as folder:
        quantized = Path(folder) / "int8.onnx"
        try:
            quantize_static(
                onnx.load_from_string(fp32), quantized, Digits(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                # 7-bit weights: on CPUs without VNNI (AVX2) the uint8 x int8 products saturate
                # otherwise. The seed Net lost 0.0051 test accuracy that way on an AMD EPYC Zen 3.
                reduce_range=True,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - onnxruntime's quantizer raises many kinds
            raise MnistlitError(f"cannot quantize the ONNX model to int8: {e}") from e
        proto = onnx.load(str(quantized))
    onnx.helper.set_model_props(proto, metadata)
    return proto.SerializeToString()


@dataclass
class Int8Check:
    """The int8 file against the fp32 ONNX file on the test set, and how fast each runs."""

    images: int
    same_digit: int
    max_difference: float
    accuracy: float
    fp32_accuracy: float
    size_bytes: int
    fp32_size_bytes: int
    ms_batch_1: float
    fp32_ms_batch_1: float
    per_s_batch_256: float
    fp32_per_s_batch_256: float

    def passed(self, max_accuracy_drop: float) -> bool:
        return self.fp32_accuracy - self.accuracy <= max_accuracy_drop + 1e-12


def speed(run, digits: np.ndarray) -> tuple[float, float]:
    """Median milliseconds of one digit alone (200 runs), and digits a second in batches of 256."""
    single = []
    for digit in digits[:200]:
        start = time.perf_counter()
        run(digit[None])
        single.append((time.perf_counter() - start) * 1e3)
    start = time.perf_counter()
    for first in range(0, len(digits), 256):
        run(digits[first : first + 256])
    return statistics.median(single), len(digits) / (time.perf_counter() - start)


def check_int8(int8, fp32, digits: np.ndarray, labels: np.ndarray, sizes: tuple[int, int]) -> Int8Check:
    """``int8`` and ``fp32``: functions from uint8 digits to probabilities (numpy)."""
    answers = np.concatenate([int8(digits[i : i + 500]) for i in range(0, len(digits), 500)])
    reference = np.concatenate([fp32(digits[i : i + 500]) for i in range(0, len(digits), 500)])
    ms, per_s = speed(int8, digits)
    fp32_ms, fp32_per_s = speed(fp32, digits)
    return Int8Check(
        images=len(digits),
        same_digit=int((answers.argmax(1) == reference.argmax(1)).sum()),
        max_difference=float(np.abs(answers - reference).max()),
        accuracy=float((answers.argmax(1) == labels).mean()),
        fp32_accuracy=float((reference.argmax(1) == labels).mean()),
        size_bytes=sizes[0],
        fp32_size_bytes=sizes[1],
        ms_batch_1=ms,
        fp32_ms_batch_1=fp32_ms,
        per_s_batch_256=per_s,
        fp32_per_s_batch_256=fp32_per_s,
    )


def report(c: Int8Check) -> str:
    return "\n".join(
        [
            f"int8 against fp32 ONNX on {c.images:,} test images:",
            f"  same digit {c.same_digit}/{c.images} ({c.same_digit / c.images:.2%}), "
            f"max |Δp| {c.max_difference:.1e}",
            f"  accuracy   {c.accuracy:.4f} (fp32 {c.fp32_accuracy:.4f}, "
            f"{c.accuracy - c.fp32_accuracy:+.4f})",
            f"  size       {c.size_bytes / 1e3:.0f} kB (fp32 {c.fp32_size_bytes / 1e3:.0f} kB)",
            f"  batch 1    {c.ms_batch_1:.3f} ms a digit (fp32 {c.fp32_ms_batch_1:.3f} ms), median of 200",
            f"  batch 256  {c.per_s_batch_256:,.0f} digits/s (fp32 {c.fp32_per_s_batch_256:,.0f} digits/s)",
        ]
    )
