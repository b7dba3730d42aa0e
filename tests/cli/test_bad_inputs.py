"""Every bad value, argument or input file a user can give: one clear line, nothing lost."""

import os
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import (
    CONFIGS,
    assert_one_clear_line,
    cli,
    draw_seven,
    png_header_only,
    runs,
)


class Blocked(Exception):
    pass


def _blocked(signum, frame) -> None:
    raise Blocked("predict blocked for 120 s (a FIFO opened by mistake blocks forever)")


def predict(workdir: Path, predict_dir: str) -> subprocess.CompletedProcess:
    # An alarm bounds the run: SIGALRM interrupts a blocking open() of a FIFO, which the CLI
    # must never attempt.
    previous = signal.signal(signal.SIGALRM, _blocked)
    signal.alarm(120)
    try:
        return cli(workdir, "predict", *CONFIGS, "--ckpt_path", "best", "--data.predict_dir", predict_dir)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def predicted_items(result: subprocess.CompletedProcess) -> list[bytes]:
    path = Path(result.stdout.split("predictions written to ")[1].split()[0])
    rows = path.read_bytes().splitlines()[1:]
    return [row.split(b",")[0] for row in rows]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model.optimizer.init_args.lr", "-1"), "model.optimizer: Invalid learning rate: -1"),
        (("--model.lr_scheduler.init_args.T_max", "0"), "CosineAnnealingLR fails at step 1 of 2"),
        (("--early_stopping.monitor", "val_accuracy"), "early stopping monitors 'val_accuracy'"),
        (("--checkpoint.monitor", "val_accuracy"), "checkpoint monitors 'val_accuracy'"),
        (("--data.batch_size", "100000"), "batch_size=100000 is larger than the 1400 training images"),
    ],
    ids=["negative-lr", "t-max-0", "early-stopping-monitor", "checkpoint-monitor", "batch-over-the-set"],
)
def test_bad_training_values_stop_before_training_with_one_line(workdir: Path, args, message) -> None:
    result = cli(workdir, "fit", *CONFIGS, *args)
    assert_one_clear_line(result, message)
    assert "Epoch 0" not in result.stderr, "refused before the first step"
    assert runs(workdir) == [], "a run that failed before producing anything leaves no folder (case 13)"


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (("--config", "broken.yaml"), "Problems parsing config"),
        (("--config", "tiny.yaml", "--data.batchsize", "64"), "--data.batchsize"),
        (("--config", "tiny.yaml", "--data.batch_size", "many"), "data.batch_size"),
        (("--config",), "expected one argument"),
        (("--config", "tiny.yaml", "--model.optimizer.init_args.lr", "nan"), "model.optimizer"),
    ],
    ids=["malformed-yaml", "unknown-key", "wrong-type", "missing-config", "lr-nan"],
)
def test_parser_errors_are_one_line(workdir: Path, args, phrase) -> None:
    (workdir / "broken.yaml").write_text("trainer: [max_epochs: 1\n")
    result = cli(workdir, "fit", *args)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("mnistlit: error: ") and phrase in line
    assert line.endswith("(see: mnistlit fit --help)")


def test_predict_skips_bombs_and_fifos_and_keeps_every_file_name(trained: Path) -> None:
    folder = trained / "hostile"
    folder.mkdir()
    draw_seven().save(folder / "seven.png")
    draw_seven().save(folder / "seven.tif")
    draw_seven().save(folder / "seven.webp")
    draw_seven().save(folder / "cost_$^$.png")
    draw_seven().save(os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    (folder / "bomb_20000.png").write_bytes(png_header_only(20_000, 20_000))
    (folder / "bomb_13000.png").write_bytes(png_header_only(13_000, 13_000))
    os.mkfifo(folder / "fifo.png")

    result = predict(trained, "hostile")
    assert result.returncode == 0, result.stderr[-3000:]
    items = sorted(os.path.basename(item) for item in predicted_items(result))
    assert items == [b"caf\xe9.png", b"cost_$^$.png", b"seven.png", b"seven.tif", b"seven.webp"]
    skipped = {
        line.split(": ")[1].rsplit("/", 1)[-1]: line
        for line in result.stderr.splitlines()
        if "skipped" in line
    }
    assert "13000x13000 is over the limit of 40,000,000 pixels" in skipped["bomb_13000.png"]
    # Over twice Pillow's own limit, which refuses it before our check: still our cap's words.
    assert "over the limit of 40,000,000 pixels" in skipped["bomb_20000.png"]
    assert "not a regular file" in skipped["fifo.png"]
    assert Path(result.stdout.split("contact sheet: ")[1].split()[0]).is_file()


def test_a_file_name_that_looks_like_a_glob_is_read_literally(trained: Path) -> None:
    draw_seven().save(trained / "digit[1].png")
    result = predict(trained, "digit[1].png")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [Path(item.decode()).name for item in predicted_items(result)] == ["digit[1].png"]


def test_predict_under_ddp_is_refused_with_one_line(trained: Path) -> None:
    ddp = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    result = cli(trained, "predict", *CONFIGS, "--ckpt_path", "best", *ddp)
    assert_one_clear_line(result, "predict runs in one process")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--data.batch_size", "-4"), "batch_size must be at least 1"),
        (("--data.val_size", "1500"), "val_size=1500 leaves no training images"),
        (("--trainer.max_epochs", "0"), "max_epochs must be at least 1"),
        (("--trainer.default_root_dir", "a_file/logs"), "cannot create a run folder in a_file/logs"),
        (("--data.data_dir", "a_file/data"), "could not get the mnist files"),
        (("--data.dataset", "emnist"), "data.dataset 'emnist' is not one of mnist, fashion_mnist, kmnist"),
    ],
    ids=["batch-size", "val-size", "max-epochs", "log-folder", "data-folder", "dataset-name"],
)
def test_a_bad_value_stops_before_training_with_one_line(workdir: Path, args, message) -> None:
    (workdir / "a_file").write_text("a file where a folder is expected")
    result = cli(workdir, "fit", *CONFIGS, *args)
    assert_one_clear_line(result, message)
    assert not list(workdir.glob("**/*.ckpt"))


def test_a_wrong_type_is_refused_by_the_parser(workdir: Path) -> None:
    result = cli(workdir, "fit", *CONFIGS, "--data.batch_size", "many")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "batch_size" in result.stderr


def test_a_data_dir_that_is_the_datasets_own_folder_is_one_line_and_fetches_nothing(workdir: Path) -> None:
    result = cli(workdir, "fit", *CONFIGS, "--data.data_dir", "data/mnist")
    assert_one_clear_line(
        result, "data.data_dir data/mnist is the mnist folder itself", "--data.data_dir data"
    )
    assert not (workdir / "data" / "mnist" / "mnist").exists(), "no second copy"


def test_a_data_dir_that_is_a_file_is_one_line(workdir: Path) -> None:
    (workdir / "afile").write_text("not a folder")
    result = cli(workdir, "fit", *CONFIGS, "--data.data_dir", "afile")
    assert_one_clear_line(result, "data.data_dir afile is a file, not a folder")


def test_a_dataset_file_that_is_a_folder_is_named_as_a_folder_not_as_missing(workdir: Path) -> None:
    images = workdir / "data" / "mnist" / "train-images-idx3-ubyte"
    images.unlink()
    images.mkdir()
    result = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1")
    assert_one_clear_line(result, "train-images-idx3-ubyte is a folder, not the file")
    assert "train-images-idx3-ubyte missing" not in result.stderr


def test_max_image_pixels_above_pillows_own_limit_takes_effect(trained: Path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after the test
    folder = trained / "huge"
    folder.mkdir()
    (folder / "huge_20000.png").write_bytes(
        png_header_only(20_000, 20_000)
    )  # 400 MP, Pillow refuses > 358 MP
    result = cli(
        trained, "predict", *CONFIGS, "--ckpt_path", "best", "--data.predict_dir", "huge",
        "--data.max_image_pixels", "500000000",
    )  # fmt: skip
    reason = next(line for line in result.stderr.splitlines() if "skipped" in line)
    assert "bomb" not in reason.lower() and "over the limit" not in reason, reason  # opened; then truncated
