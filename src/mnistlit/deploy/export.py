"""``mnistlit export``: the network as files that run without Lightning (ONNX, torch.export's .pt2),
checked against the checkpoint on the whole test set before they get their final names.

Both files take what a client has, uint8 digits (batch, 28, 28) light ink on black as
``preprocess.mnist_digit`` makes them, and return probabilities (batch, classes): the
scaling and the softmax are inside the graph. Needs the ``export`` extra for ONNX.
"""

import hashlib
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnistlit.core.errors import MnistlitError, one_line
from mnistlit.core.inputs import DigitProbabilities
from mnistlit.files import partial_path, remove_partial, replace_synced, write_synced

FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2", "onnx-int8": "model.int8.onnx"}
INPUT, OUTPUT = "digits", "probabilities"
MAX_PROBABILITY_DIFFERENCE = 1e-5
VERIFY_BATCH = 500


@dataclass
class Check:
    """How an exported file's answers on the test set compare with the checkpoint's."""

    format: str
    same_digit: int
    images: int
    max_difference: float
    accuracy: float

    @property
    def passed(self) -> bool:
        return self.same_digit == self.images and self.max_difference <= MAX_PROBABILITY_DIFFERENCE


def default_folder(ckpt_path: str | Path) -> Path:
    """``version_N/export`` for a checkpoint in ``version_N/checkpoints/``, else ``export`` beside it."""
    folder = Path(ckpt_path).parent
    return (folder.parent if folder.name == "checkpoints" else folder) / "export"


def metadata(about: dict, class_names: list[str], ckpt_path: str | Path) -> dict[str, str]:
    """What an exported file says about itself (ONNX metadata properties, ``mnistlit.json`` in a .pt2)."""
    from importlib.metadata import version

    return {
        "classes": json.dumps(class_names),
        "input": "uint8 (batch, 28, 28), light ink on black, as mnistlit's preprocess.mnist_digit makes it",
        "output": "float32 (batch, classes) probabilities",
        "network": about["net"],
        "dataset": str(about["dataset"]),
        "val_acc": "" if about["val_acc"] is None else f"{about['val_acc']:.4f}",
        "unsure_below": "" if about["unsure_below"] is None else f"{about['unsure_below']:.6f}",
        "checkpoint": Path(ckpt_path).name,
        "checkpoint_sha256": sha256(ckpt_path),
        "mnistlit_version": version("mnistlit"),
        "torch_version": torch.__version__,
    }


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


EXAMPLE = torch.zeros((7, 28, 28), dtype=torch.uint8)
BATCH = {INPUT: {0: torch.export.Dim("batch", min=1)}}  # any batch size


def pt2_bytes(model: DigitProbabilities, metadata: dict[str, str]) -> bytes:
    """The model through torch.export, saved as a .pt2 archive holding ``metadata`` as mnistlit.json."""
    try:
        program = torch.export.export(model, (EXAMPLE,), dynamic_shapes=BATCH)
    except Exception as e:  # noqa: BLE001 - torch.export raises many kinds of errors
        raise MnistlitError(f"cannot export the network with torch.export: {_innermost(e)}") from e
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Said of every channels_last weight, which fills its storage all the same; the .pt2 keeps
        # the layout, and with it the speed (contiguous weights make the convolutions ~3x slower).
        warnings.filterwarnings("ignore", "No complete tensor found in the group")
        torch.export.save(program, buffer, extra_files={"mnistlit.json": json.dumps(metadata)})
    return buffer.getvalue()


def onnx_bytes(model: DigitProbabilities, metadata: dict[str, str]) -> bytes:
    """The model as a single-file ONNX model carrying ``metadata`` as its metadata properties."""
    try:
        import onnx
    except ImportError as e:
        raise MnistlitError("ONNX export needs the export extra: pip install 'mnistlit[export]'") from e
    try:
        onnx_program = torch.onnx.export(
            model, (EXAMPLE,), input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes=BATCH, dynamo=True, verbose=False,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the exporter wraps every failure in its own types
        raise MnistlitError(f"cannot export the network to ONNX: {_innermost(e)}") from e
    if onnx_program is None:
        raise MnistlitError("cannot export the network to ONNX: the exporter returned nothing")
    proto = onnx_program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    return proto.SerializeToString()


def _innermost(error: BaseException) -> str:
    """The first line of the deepest cause, with the operator when the exporter names one."""
    causes = [error]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    text = "\n".join(str(c) for c in causes)
    operator = re.search(r"op='([\w.]+)'|torch\.ops\.([\w.]+?)(?:\.default)?\b", text)
    named = f"operator {operator.group(1) or operator.group(2)}: " if operator else ""
    first_line = (
        str(causes[-1]).strip().splitlines()[0] if str(causes[-1]).strip() else type(causes[-1]).__name__
    )
    return one_line(named + first_line, 400)


def write_partial(path: Path, data: bytes) -> Path:
    """``data`` in a temporary file beside ``path``, flushed to disk; its path."""
    partial = partial_path(path)
    try:
        write_synced(partial, data)
    except OSError as e:
        remove_partial(partial)
        raise MnistlitError(f"could not write {path}: {e.strerror or e}; nothing was exported") from e
    return partial


def run_file(format: str, path: Path):
    """A function from uint8 digits (numpy) to probabilities (numpy), running the exported file."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda digits: session.run(None, {INPUT: digits})[0]
    module = torch.export.load(str(path)).module()

    def run(digits: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(digits)).numpy()

    return run


def check(format: str, run, digits: torch.Tensor, labels: torch.Tensor, expected: torch.Tensor) -> Check:
    """Run every test digit through an exported file and compare with the PyTorch probabilities."""
    answers = torch.cat([torch.from_numpy(run(batch.numpy())) for batch in digits.split(VERIFY_BATCH)])
    return Check(
        format=format,
        same_digit=int((answers.argmax(1) == expected.argmax(1)).sum()),
        images=len(digits),
        max_difference=float((answers - expected).abs().max()),
        accuracy=float((answers.argmax(1) == labels).float().mean()),
    )


def report(checks: list[Check], reference_accuracy: float) -> str:
    lines = [f"checked on {checks[0].images:,} test images against the checkpoint in PyTorch "
             f"(accuracy {reference_accuracy:.4f}):"]  # fmt: skip
    lines.append(f"  {'format':<7}{'same digit':>14}{'max |Δp|':>11}{'accuracy':>10}")
    for c in checks:
        same = f"{c.same_digit}/{c.images}"
        lines.append(f"  {c.format:<7}{same:>14}{c.max_difference:>11.1e}{c.accuracy:>10.4f}")
    return "\n".join(lines)


def export(
    net: nn.Module,
    formats: list[str],
    output: Path,
    metadata: dict[str, str],
    digits: torch.Tensor,
    labels: torch.Tensor,
    calibration: torch.Tensor | None = None,
    max_accuracy_drop: float = 0.001,
) -> tuple[list[Path], str]:
    """Write ``formats`` of ``net`` into ``output`` once every one passes its check on ``digits``.

    ONNX and .pt2 must give the checkpoint's answers; int8 (``onnx-int8``, made from the ONNX
    file with the ``calibration`` digits) may lose at most ``max_accuracy_drop`` of the fp32
    ONNX file's accuracy. Each file is written under a temporary name, loaded back and checked
    there, and renamed only when all checks pass: a failure leaves nothing under the final names.
    """
    from mnistlit.deploy import quantize

    model = DigitProbabilities(net).eval()
    with torch.inference_mode():
        expected = torch.cat([model(batch) for batch in digits.split(VERIFY_BATCH)])
    make = {"onnx": onnx_bytes, "pt2": pt2_bytes}
    contents = {format: make[format](model, metadata) for format in formats if format in make}
    if "onnx-int8" in formats:
        assert calibration is not None and "onnx" in contents, "int8 is made from the ONNX file"
        about = {"quantization": "static QDQ: int8 weights per channel (7-bit range), uint8 activations"}
        about |= {
            "calibration_images": str(len(calibration)),
            "calibration_seed": str(quantize.CALIBRATION_SEED),
        }
        contents["onnx-int8"] = quantize.int8_bytes(
            contents["onnx"], calibration.numpy(), {**metadata, **about}
        )
    try:  # only now: a failed export (no onnx, an operator ONNX lacks) leaves no empty folder
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MnistlitError(f"cannot create {output}: {e.strerror or e}; nothing was exported") from e
    partials: dict[str, Path] = {}
    try:
        for format, data in contents.items():
            partials[format] = write_partial(output / FORMATS[format], data)
        checks = [
            check(f, run_file(f, path), digits, labels, expected) for f, path in partials.items() if f in make
        ]
        reference_accuracy = float((expected.argmax(1) == labels).float().mean())
        summary = report(checks, reference_accuracy)
        failed = [c for c in checks if not c.passed]
        if failed:
            worst = failed[0]
            raise MnistlitError(
                f"the exported {worst.format} file does not match the checkpoint: "
                f"{worst.images - worst.same_digit} of {worst.images} test digits differ, "
                f"largest probability difference {worst.max_difference:.1e} "
                f"(allowed {MAX_PROBABILITY_DIFFERENCE:.0e}); nothing was exported"
            )
        if "onnx-int8" in partials:
            sizes = (len(contents["onnx-int8"]), len(contents["onnx"]))
            int8 = quantize.check_int8(
                run_file("onnx", partials["onnx-int8"]), run_file("onnx", partials["onnx"]),
                digits.numpy(), labels.numpy(), sizes,
            )  # fmt: skip
            summary += "\n" + quantize.report(int8)
            if not int8.passed(max_accuracy_drop):
                raise MnistlitError(
                    f"the int8 file's test accuracy is {int8.accuracy:.4f}, "
                    f"{int8.fp32_accuracy - int8.accuracy:.4f} below the fp32 ONNX file's "
                    f"{int8.fp32_accuracy:.4f} (allowed {max_accuracy_drop}: "
                    "--max_accuracy_drop); nothing was exported"
                )
        written: list[Path] = []
        for format, partial in partials.items():
            target = output / FORMATS[format]
            try:
                replace_synced(partial, target)
            except OSError as e:
                kept = f"{', '.join(map(str, written))} written" if written else "nothing was exported"
                raise MnistlitError(f"could not write {target}: {e.strerror or e}; {kept}") from e
            written.append(target)
        return written, summary
    finally:
        for partial in partials.values():
            remove_partial(partial)
