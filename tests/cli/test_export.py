"""mnistlit export: both formats from a trained checkpoint, checked against it, usable without PyTorch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from mnistlit.core.errors import MnistlitError
from mnistlit.core.module import LitClassifier
from mnistlit.deploy import export
from mnistlit.deploy.images import classify
from tests.helpers import (
    CLI_ENV,
    CONFIGS,
    PYTHON,
    ROOT,
    WITH_A_FULL_DISK,
    assert_one_clear_line,
    cli,
    draw_digits,
    read_only,
)
from tests.probes import AlwaysDropoutNet

EXPORT = ("export", *CONFIGS, "--ckpt_path", "best")


@pytest.fixture(scope="module")
def trained(trained: Path) -> Path:
    """The shared trained run (conftest.py), with its default export."""
    exported = cli(trained, *EXPORT)
    assert exported.returncode == 0, exported.stderr[-3000:]
    (trained / "export.out").write_text(exported.stdout)
    return trained


def best_of(workdir: Path) -> Path:
    (best,) = (workdir / "lightning_logs" / "version_0" / "checkpoints").glob("best*.ckpt")
    return best


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


WITHOUT_TORCH = """
import runpy, sys
sys.modules["torch"] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
assert sys.modules["torch"] is None, "nothing imported torch"
"""


def test_both_formats_go_into_the_run_folder_checked_on_the_test_set(trained: Path) -> None:
    folder = trained / "lightning_logs" / "version_0" / "export"
    assert files_in(folder) == ["model.onnx", "model.pt2"]
    assert files_in(trained / "lightning_logs") == ["version_0"], "export starts no run"
    report = (trained / "export.out").read_text()
    lines = {line.split()[0]: line.split() for line in report.splitlines() if line.startswith("  ")}
    for format in ("onnx", "pt2"):
        _, same, difference, accuracy = lines[format]
        assert same == "200/200" and float(difference) <= 1e-5, report
    assert lines["onnx"][3] == lines["pt2"][3], "same digits, same accuracy"


def test_the_files_describe_themselves(trained: Path) -> None:
    folder = trained / "lightning_logs" / "version_0" / "export"
    onnx_model = onnx.load(folder / "model.onnx")
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx_model.graph.initializer)
    from_onnx = {p.key: p.value for p in onnx_model.metadata_props}
    extra = {"mnistlit.json": ""}
    torch.export.load(folder / "model.pt2", extra_files=extra)
    from_pt2 = json.loads(extra["mnistlit.json"])
    assert from_onnx == from_pt2
    assert json.loads(from_onnx["classes"]) == [str(d) for d in range(10)]
    assert from_onnx["dataset"] == "mnist" and from_onnx["network"] == "mnistlit.core.nets.Net"
    assert from_onnx["checkpoint_sha256"] == export.sha256(best_of(trained))
    assert 0 < float(from_onnx["val_acc"]) <= 1
    unsure_below = torch.load(best_of(trained), weights_only=True)["unsure_below"]
    assert float(from_onnx["unsure_below"]) == pytest.approx(unsure_below, abs=1e-6)
    assert from_onnx["torch_version"] == torch.__version__ and from_onnx["mnistlit_version"]


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_any_batch_size_gives_the_checkpoints_answers(trained: Path, batch: int) -> None:
    folder = trained / "lightning_logs" / "version_0" / "export"
    digits, _ = draw_digits(batch, seed=batch)
    reference = export.DigitProbabilities(LitClassifier.load_from_checkpoint(best_of(trained)).net).eval()
    with torch.inference_mode():
        expected = reference(torch.from_numpy(digits)).numpy()
    session = onnxruntime.InferenceSession(folder / "model.onnx", providers=["CPUExecutionProvider"])
    (from_onnx,) = session.run(None, {"digits": digits})
    from_pt2 = torch.export.load(folder / "model.pt2").module()(torch.from_numpy(digits)).detach().numpy()
    for answer in (from_onnx, from_pt2):
        assert answer.shape == (batch, 10)
        assert np.array_equal(answer.argmax(1), expected.argmax(1))
        assert np.abs(answer - expected).max() <= 1e-5


def test_format_and_output_choose_what_is_written_and_where(trained: Path) -> None:
    result = cli(trained, *EXPORT, "--format", "onnx", "--output", "shipped")
    assert result.returncode == 0, result.stderr[-3000:]
    assert files_in(trained / "shipped") == ["model.onnx"]
    assert "pt2" not in result.stdout


def test_the_example_classifies_files_without_pytorch(trained: Path, tmp_path: Path) -> None:
    digits, _ = draw_digits(6, seed=7)
    files = []
    for i, digit in enumerate(digits):  # as a scan would be: dark ink on light paper, larger
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray(255 - digit).resize((112, 112)).save(files[-1])
    (tmp_path / "notes.png").write_text("not an image")
    model = LitClassifier.load_from_checkpoint(best_of(trained))
    onnx_file = trained / "lightning_logs" / "version_0" / "export" / "model.onnx"
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(ROOT / "examples" / "classify_onnx.py"), str(onnx_file),
         str(tmp_path / "notes.png"), *map(str, files)],
        capture_output=True, text=True, timeout=60, env={**CLI_ENV, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.startswith(f"skipped {tmp_path / 'notes.png'}: cannot identify image file")
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == [str(f) for f in files]
    for (_, label, probability, unsure), file in zip(rows, files, strict=True):
        with Image.open(file) as image:
            digit, expected = classify(model, image)
        assert label == str(digit) and float(probability) == pytest.approx(expected, abs=1e-4)
        assert unsure == ("unsure" if expected < model.unsure_below else "")


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (("--ckpt_path", "missing.ckpt"), "--ckpt_path missing.ckpt: no such file"),
        (("--format", "gif"), "format"),
        (("--output", "export.out/folder"), "Not a directory"),
    ],
    ids=["missing-checkpoint", "unknown-format", "output-not-a-folder"],
)
def test_bad_input_is_one_line_and_writes_nothing(trained: Path, args, phrase) -> None:
    before = files_in(trained)
    result = cli(trained, *EXPORT, *args)
    assert_one_clear_line(result, phrase)
    assert files_in(trained) == before


def test_a_full_disk_is_one_line_and_leaves_no_file(trained: Path) -> None:
    result = subprocess.run(
        [PYTHON, "-c", WITH_A_FULL_DISK, *EXPORT, "--output", "full"],
        cwd=trained, capture_output=True, text=True, timeout=300, env=CLI_ENV,
    )  # fmt: skip
    assert_one_clear_line(result, "could not write", "model.onnx: File too large", "nothing was exported")
    assert files_in(trained / "full") == []


def test_a_read_only_folder_or_a_folder_in_the_files_place_is_named_as_the_target(trained: Path) -> None:
    with read_only(trained / "read-only") as folder:
        result = cli(trained, *EXPORT, "--output", str(folder))
    assert_one_clear_line(
        result, f"could not write {folder}/model.onnx: Read-only file system; nothing was exported"
    )
    (trained / "taken" / "model.onnx").mkdir(parents=True)
    result = cli(trained, *EXPORT, "--output", "taken")
    assert_one_clear_line(result, "could not write taken/model.onnx: Is a directory; nothing was exported")
    assert files_in(trained / "taken") == ["model.onnx"], "no temporary file left beside it"


def test_a_network_onnx_cannot_express_is_named_with_its_operator(trained: Path) -> None:
    workdir = trained / "unexportable"
    workdir.mkdir()
    (workdir / "tiny.yaml").write_text((trained / "tiny.yaml").read_text())
    (workdir / "data").symlink_to(trained / "data")
    args = ("--model.net", "tests.probes.KthValueNet")
    fitted = cli(workdir, "fit", *CONFIGS, *args, "--trainer.limit_train_batches", "3")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    result = cli(workdir, *EXPORT)
    assert_one_clear_line(result, "cannot export the network to ONNX", "operator aten.kthvalue")
    assert files_in(workdir / "lightning_logs" / "version_0" / "export") == []
    pt2_only = cli(workdir, *EXPORT, "--format", "pt2")
    assert pt2_only.returncode == 0, pt2_only.stderr[-3000:]


def test_files_that_answer_differently_from_the_checkpoint_are_not_kept(tmp_path: Path) -> None:
    digits, labels = draw_digits(100, seed=3)
    torch.manual_seed(0)
    with pytest.raises(MnistlitError, match="does not match the checkpoint: .* of 100 test digits differ"):
        export.export(
            AlwaysDropoutNet(), ["onnx", "pt2"], tmp_path / "out", {},
            torch.from_numpy(digits), torch.from_numpy(labels).long(),
        )  # fmt: skip
    assert files_in(tmp_path / "out") == []


def test_int8_is_calibrated_on_training_digits_measured_and_kept(trained: Path) -> None:
    result = cli(trained, *EXPORT, "--format", "onnx-int8", "--output", "int8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert files_in(trained / "int8") == ["model.int8.onnx", "model.onnx"]
    int8, fp32 = trained / "int8" / "model.int8.onnx", trained / "int8" / "model.onnx"
    about = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert about["calibration_images"] == "1000" and about["calibration_seed"] == "0"
    assert about["quantization"].startswith("static QDQ")
    assert {"QuantizeLinear", "DequantizeLinear"} <= {
        node.op_type for node in onnx.load(str(int8)).graph.node
    }
    assert int8.stat().st_size < fp32.stat().st_size / 2, "int8 weights: under half the bytes"
    for line in ("int8 against fp32 ONNX on 200 test images:", "same digit", "batch 256"):
        assert line in result.stdout
    digits, labels = draw_digits(300, seed=11)  # digits neither the export nor its check saw
    answers = [onnxruntime.InferenceSession(str(f)).run(None, {"digits": digits})[0] for f in (int8, fp32)]
    accuracies = [float((a.argmax(1) == labels).mean()) for a in answers]
    assert accuracies[0] >= accuracies[1] - 0.02, accuracies


def test_int8_that_loses_accuracy_is_not_kept(trained: Path, tmp_path: Path) -> None:
    """Calibrated on blank images, the activations' ranges are wrong: the file is refused."""
    digits, labels = draw_digits(300, seed=3)
    net = LitClassifier.load_from_checkpoint(best_of(trained)).net.eval()
    with pytest.raises(MnistlitError, match="the int8 file's test accuracy is .* below the fp32 ONNX file's"):
        export.export(
            net, ["onnx", "onnx-int8"], tmp_path / "out", {}, torch.from_numpy(digits),
            torch.from_numpy(labels).long(), calibration=torch.zeros((100, 28, 28), dtype=torch.uint8),
        )  # fmt: skip
    assert files_in(tmp_path / "out") == []


def test_export_without_onnx_installed_is_one_line_and_leaves_no_folder(trained: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now fails, as without the extra
    result = cli(trained, *EXPORT, "--format", "onnx", "--output", "shipped_without_onnx")
    assert_one_clear_line(result, "ONNX export needs the export extra")
    assert not (trained / "shipped_without_onnx").exists()
