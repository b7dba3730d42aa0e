"""Pictures and predictions on real image files: history, TensorBoard, preprocessing."""

import csv
import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from tests.helpers import (
    CONFIGS,
    PYTHON,
    assert_one_clear_line,
    cli,
    draw_seven,
    tiny_config,
    write_synthetic_mnist,
)


@pytest.fixture(scope="module")
def fitted_and_tested(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("pictures")
    tiny_config(workdir, write_synthetic_mnist(workdir / "data" / "mnist"), max_epochs=3)
    for args in (("fit", *CONFIGS), ("test", *CONFIGS, "--ckpt_path", "best")):
        result = cli(workdir, *args)
        assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def tags_by_plugin(run: Path) -> dict[str, set[str]]:
    """Every summary tag in the run's event files, grouped by TensorBoard plugin (scalars, images, ...)."""
    tags: dict[str, set[str]] = {}
    for file in run.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(file)).Load():
            for value in event.summary.value:
                tags.setdefault(value.metadata.plugin_data.plugin_name, set()).add(value.tag)
    return tags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fit_leaves_history_curves_and_digits(fitted_and_tested: Path) -> None:
    run = fitted_and_tested / "lightning_logs" / "version_0"
    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert all(0 <= float(r["val_acc"]) <= 1 and float(r["seconds"]) > 0 for r in rows)
    with Image.open(run / "learning_curves.png") as curves:
        assert curves.size == (1000, 400)
    with Image.open(run / "train_digits.png") as digits:
        assert digits.size == (660, 780)

    tags = tags_by_plugin(run)
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "hp/best_val_acc"} <= tags["scalars"]
    assert "train_digits" in tags["images"]
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= tags["hparams"]
    assert "custom_scalars__config__" in tags["custom_scalars"]


def test_test_leaves_confusion_matrix_and_mistakes(fitted_and_tested: Path) -> None:
    run = fitted_and_tested / "lightning_logs" / "version_1"
    with Image.open(run / "confusion_matrix.png") as matrix:
        assert matrix.size == (700, 600)
    tags = tags_by_plugin(run)
    assert "confusion_matrix" in tags["images"]
    assert {"test_acc", "hp/test_acc"} <= tags["scalars"]
    assert "_hparams_/experiment" in tags["hparams"]
    if (run / "misclassified.png").exists():
        assert "misclassified" in tags["images"]


def test_a_real_tensorboard_server_shows_the_scalars(fitted_and_tested: Path) -> None:
    port = free_port()
    tensorboard = [PYTHON, "-m", "tensorboard.main"]  # as `make tensorboard` starts it, in .venv
    logdir = fitted_and_tested / "lightning_logs"
    server = subprocess.Popen(
        [*tensorboard, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5
                ) as r:
                    tags = json.load(r)
                if "version_0" in tags:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tensorboard did not serve the run"
            time.sleep(0.5)
        assert {"train_loss", "val_acc"} <= set(tags["version_0"])
        assert "test_acc" in tags["version_1"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_predict_on_a_folder_of_images(fitted_and_tested: Path) -> None:
    folder = fitted_and_tested / "my_digits"
    folder.mkdir()
    draw_seven().save(folder / "seven.png")
    draw_seven(size=(120, 200), origin=(10, 5)).convert("RGB").save(folder / "small_seven.jpg")
    (folder / "notes.png").write_text("not an image")
    result = cli(
        fitted_and_tested, "predict", *CONFIGS, "--ckpt_path", "best", "--data.predict_dir", "my_digits"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "notes.png" in result.stderr
    path = Path(result.stdout.split("predictions written to ")[1].split()[0])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["item"]).name for r in rows) == ["seven.png", "small_seven.jpg"]
    for row in rows:
        assert row["target"] == "" and 0 <= int(row["prediction"]) <= 9
        assert len(row["top3"].split()) == 3
    with Image.open(path.with_suffix(".png")) as sheet:
        assert sheet.size[0] > 0


def test_a_predict_dir_without_images_is_one_clear_line(fitted_and_tested: Path) -> None:
    (fitted_and_tested / "empty").mkdir(exist_ok=True)
    result = cli(fitted_and_tested, "predict", *CONFIGS, "--ckpt_path", "best", "--data.predict_dir", "empty")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no images" in result.stderr.strip().splitlines()[-1]


def test_a_predict_dir_that_does_not_exist_says_so(fitted_and_tested: Path) -> None:
    result = cli(
        fitted_and_tested, "predict", *CONFIGS, "--ckpt_path", "best", "--data.predict_dir", "nowhere"
    )
    assert_one_clear_line(result, "data.predict_dir nowhere: no such file or folder")


def test_python_use_in_three_lines(fitted_and_tested: Path) -> None:
    (best,) = (fitted_and_tested / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt")
    draw_seven().save(fitted_and_tested / "seven_for_python.png")
    from mnistlit import LitClassifier, classify  # the three lines of docs/usage.md

    model = LitClassifier.load_from_checkpoint(best)
    digit, probability = classify(model, Image.open(fitted_and_tested / "seven_for_python.png"))
    assert 0 <= digit <= 9 and 0 < probability <= 1
