"""Every subcommand end to end, as a user types it (in-process through ``cli``, which reports what a
new process would print and return)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from mnistlit import LitClassifier, classify
from mnistlit.runs.precision import cpu_bf16_instructions
from tests.helpers import (
    BASE_CONFIG,
    CLI_ENV,
    CONFIGS,
    PYTHON,
    assert_one_clear_line,
    cli,
    draw_seven,
    tiny_config,
    write_synthetic_mnist,
)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A folder where `fit` ran for two epochs on the synthetic data."""
    workdir = tmp_path_factory.mktemp("fitted")
    md5 = write_synthetic_mnist(workdir / "data" / "mnist")
    tiny_config(workdir, md5, max_epochs=2)
    result = cli(workdir, "fit", *CONFIGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


MMAPPED_BY_A_LARGE_ALLOCATION = """
import ctypes, sys, torch
from mnistlit.runs.process import keep_freed_memory

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    keep_freed_memory()
before = libc.mallinfo2().hblkhd
block = torch.ones(2**21)  # 8 MB
print(libc.mallinfo2().hblkhd - before)
"""


def test_fit_writes_checkpoints_config_and_tensorboard_events(fitted) -> None:
    workdir, result = fitted
    run = workdir / "lightning_logs" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("best-epoch=*-val_acc=*.ckpt"))) == 1
    assert list(run.glob("events.out.tfevents.*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["net"]["class_path"] == "mnistlit.core.nets.Net"
    assert config["data"]["batch_size"] == 32


def test_output_that_is_not_a_terminal_gets_one_line_per_epoch(fitted) -> None:
    _, result = fitted
    assert "\r" not in result.stderr and "\r" not in result.stdout, "no redrawn progress bar in a log"
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ") and ": step " in line]
    assert [line.split(":")[0] for line in epochs] == ["epoch 0/1", "epoch 1/1"]
    assert epochs[-1].startswith("epoch 1/1: step 88, ") and "val_acc" in epochs[-1]


def test_fit_prints_the_history_table_and_how_to_test(fitted) -> None:
    _, result = fitted
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:6] == [
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"])  # fmt: skip
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert [row[0] for row in rows] == ["0", "1"]
    assert all(0.0 <= float(row[4]) <= 1.0 for row in rows)
    assert "best checkpoint:" in result.stdout
    assert (
        f"python -m mnistlit test --config {BASE_CONFIG} --config tiny.yaml --ckpt_path best" in result.stdout
    )


def test_the_synthetic_digits_are_learned(fitted) -> None:
    workdir, _ = fitted
    (best,) = (workdir / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt")
    val_acc = float(best.stem.split("val_acc=")[1])
    assert val_acc > 0.5


def test_test_with_best_in_a_new_process_reports_test_acc(fitted) -> None:
    workdir, _ = fitted
    result = cli(workdir, "test", *CONFIGS, "--ckpt_path", "best")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test_acc" in result.stdout
    assert "best-epoch=" in result.stderr + result.stdout


def test_validate_with_last_in_a_new_process(fitted) -> None:
    workdir, _ = fitted
    result = cli(workdir, "validate", *CONFIGS, "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val_acc" in result.stdout


def test_predict_writes_a_csv_row_per_test_image(fitted) -> None:
    workdir, _ = fitted
    result = cli(workdir, "predict", *CONFIGS, "--ckpt_path", "best")
    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stdout.split("predictions written to ")[1].split()[0])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 200
    assert list(rows[0]) == ["item", "target", "prediction", "probability", "top3", "unsure"]
    assert [int(r["item"]) for r in rows] == list(range(200))
    assert all(0 <= int(r["prediction"]) <= 9 and 0 < float(r["probability"]) <= 1 for r in rows)
    for r in rows:  # the same probability, rounded to 4 places in top3 and to 6 in probability
        label, top_p = r["top3"].split()[0].split(":")
        assert label == r["prediction"] and abs(float(top_p) - float(r["probability"])) <= 5e-5 + 1e-9
    accuracy = sum(r["target"] == r["prediction"] for r in rows) / len(rows)
    assert accuracy > 0.5
    (best,) = (workdir / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt")
    threshold = torch.load(best, weights_only=True)["unsure_below"]
    expected = ["yes" if float(r["probability"]) < threshold else "no" for r in rows]
    assert [r["unsure"] for r in rows] == expected


def test_a_checkpoint_loads_alone_with_weights_only(fitted) -> None:
    workdir, _ = fitted
    (best,) = (workdir / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt")
    model = LitClassifier.load_from_checkpoint(best, weights_only=True)
    assert type(model.net).__name__ == "Net"
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_print_config_works(workdir: Path) -> None:
    result = cli(workdir, "fit", *CONFIGS, "--print_config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["early_stopping"]["patience"] == 3
    assert config["checkpoint"]["monitor"] == "val_acc"


def test_ckpt_best_before_any_run_is_one_clear_line(workdir: Path) -> None:
    result = cli(workdir, "test", *CONFIGS, "--ckpt_path", "best")
    assert_one_clear_line(result, "--ckpt_path best", "no run under", "has a best checkpoint")


def test_a_missing_checkpoint_file_is_one_clear_line(workdir: Path) -> None:
    result = cli(workdir, "test", *CONFIGS, "--ckpt_path", "nowhere.ckpt")
    assert_one_clear_line(result, "nowhere.ckpt", "no such file")


def test_a_file_that_is_not_a_checkpoint_is_one_clear_line(workdir: Path) -> None:
    (workdir / "garbage.ckpt").write_bytes(b"\x00not a checkpoint")
    result = cli(workdir, "test", *CONFIGS, "--ckpt_path", "garbage.ckpt")
    assert_one_clear_line(result, "cannot load checkpoint garbage.ckpt")


def test_a_bad_config_value_is_one_clear_line(workdir: Path) -> None:
    result = cli(workdir, "fit", *CONFIGS, "--data.batch_size", "0")
    assert_one_clear_line(result, "batch_size must be at least 1")
    assert not (workdir / "lightning_logs").exists()


def test_an_unknown_key_is_refused(workdir: Path) -> None:
    result = cli(workdir, "fit", *CONFIGS, "--data.batchsize", "64")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "batchsize" in result.stderr


def test_no_data_and_no_source_is_one_clear_line(workdir: Path) -> None:
    for path in (workdir / "data" / "mnist").iterdir():
        path.unlink()
    result = cli(workdir, "fit", *CONFIGS)
    assert_one_clear_line(result, "could not get the mnist files", "Put train-images-idx3-ubyte")
    assert "files in the data folder" in result.stderr and "download mirrors" in result.stderr


@pytest.mark.parametrize(
    ("config", "net"),
    [("speedrun.yaml", "SpeedrunNet"), ("strong.yaml", "StrongNet"), ("handwriting.yaml", "StrongNet")],
)
def test_the_one_cycle_recipes_train_end_to_end(workdir: Path, config: str, net: str) -> None:
    # Their one-cycle schedules follow the run by themselves: 2 epochs of ceil(1400 / 32) steps.
    result = cli(workdir, "fit", "--config", str(BASE_CONFIG.with_name(config)), "--config", "tiny.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    # Each recipe asks for bf16-mixed; it gets it where the CPU computes bf16 natively.
    chosen = (
        "bf16-mixed: this CPU computes bf16" if cpu_bf16_instructions() else "32-true: bf16-mixed was asked"
    )
    assert f"mnistlit: precision {chosen}" in result.stderr
    run = workdir / "lightning_logs" / "version_0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["net"]["class_path"] == f"mnistlit.core.nets.{net}"
    assert config["model"]["lr_scheduler_interval"] == "step"
    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert float(rows[-1]["val_acc"]) > 0.5
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["lr_schedulers"][0]["total_steps"] == last["global_step"] == 2 * 44

    # The checkpoint alone rebuilds its network, from plain Python (no config).
    draw_seven().save(workdir / "seven.png")
    model = LitClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    digit, probability = classify(model, Image.open(workdir / "seven.png"))
    assert type(model.net).__name__ == net and 0 <= digit <= 9 and 0 < probability <= 1


def test_the_number_of_classes_comes_from_the_dataset(workdir: Path) -> None:
    forty_seven = yaml.safe_load((workdir / "tiny.yaml").read_text())
    forty_seven["data"]["dataset"]["classes"] = [f"class {i}" for i in range(47)]
    (workdir / "tiny47.yaml").write_text(yaml.safe_dump(forty_seven))
    speedrun = str(BASE_CONFIG.with_name("speedrun.yaml"))
    result = cli(workdir, "fit", "--config", speedrun, "--config", "tiny47.yaml", "--trainer.max_epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    last = torch.load(
        workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    assert last["state_dict"]["net.classifier.3.weight"].shape == (47, 256)
    assert last["hyper_parameters"]["net"]["init_args"]["num_classes"] == 47


def test_describe_says_what_a_checkpoint_holds_and_writes_nothing(fitted) -> None:
    workdir, _ = fitted
    before = sorted((workdir / "lightning_logs").iterdir())
    result = cli(workdir, "describe", *CONFIGS, "--ckpt_path", "best")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "network:    mnistlit.core.nets.Net {'num_classes': 10} (53,994 parameters)" in result.stdout
    assert "dataset:    mnist (10 classes), val_size 100, split_seed 42" in result.stdout
    assert "val_acc:    " in result.stdout and "best-epoch=" in result.stdout
    (best,) = (workdir / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt")
    threshold = torch.load(best, weights_only=True)["unsure_below"]
    assert f"unsure:     answers below {threshold:.4f} probability" in result.stdout
    assert sorted((workdir / "lightning_logs").iterdir()) == before, "describe reserves no run folder"


def test_version(tmp_path: Path) -> None:
    result = cli(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.strip() == "mnistlit 0.2.0"


@pytest.mark.parametrize("command", ["console script", "python -m"])
def test_the_version_is_answered_before_torch_is_imported(tmp_path: Path, command: str) -> None:
    """`mnistlit --version` is a tenth of a second, not the seconds torch and Lightning take to import."""
    script = Path(PYTHON).parent / "mnistlit"
    start = [str(script)] if command == "console script" else [PYTHON, "-m", "mnistlit"]
    result = subprocess.run(
        [*start, "--version"], cwd=tmp_path, capture_output=True, text=True,
        env={**CLI_ENV, "PYTHONPROFILEIMPORTTIME": "1"},
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == "mnistlit 0.2.0\n", result.stderr[-3000:]
    imported = {
        line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")
    }
    assert "mnistlit" in imported and not {"torch", "lightning", "numpy"} & imported


def test_help_of_one_subcommand_and_of_all(tmp_path: Path) -> None:
    """Only the named subcommand's parser is built (all seven cost about 0.5 s); without one, all are."""
    fit_help = cli(tmp_path, "fit", "--help")
    assert fit_help.returncode == 0 and "--trainer.max_epochs" in fit_help.stdout
    assert "--data.predict_dir" in cli(tmp_path, "predict", "--help").stdout
    everything = cli(tmp_path, "--help")
    assert everything.returncode == 0
    assert "{fit,validate,test,predict,describe,serve,export}" in everything.stdout
    misspelt = cli(tmp_path, "fitt")
    assert_one_clear_line(misspelt, "invalid choice: 'fitt'", "'describe', 'serve', 'export'")


def test_bf16_mixed_precision_and_a_compiled_network_train(workdir: Path) -> None:
    result = cli(
        workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed",
        "--model.compile", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (best,) = (workdir / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt")
    assert "net.layers.0.weight" in torch.load(best, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_blocks_come_from_the_kept_heap_not_from_fresh_mappings() -> None:
    """glibc maps a large block fresh from the OS (and unmaps it when freed) unless told otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def mmapped_bytes(mode: str) -> int:
        command = [sys.executable, "-c", MMAPPED_BY_A_LARGE_ALLOCATION, mode]
        return int(subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout)

    assert mmapped_bytes("default") >= 8 * 2**20
    assert mmapped_bytes("keep") == 0


@pytest.mark.parametrize(
    "options",
    [
        ("--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "."),
        ("--trainer.logger", "false"),
        ("--trainer.fast_dev_run", "2"),
    ],
    ids=["csv logger", "no logger", "fast_dev_run"],
)
def test_the_run_folder_does_not_depend_on_the_logger(workdir: Path, options: tuple[str, ...]) -> None:
    fitted = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1", *options)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    assert sorted(p.name for p in workdir.iterdir()) == ["data", "lightning_logs", "tiny.yaml"]
    run = workdir / "lightning_logs" / "version_0"
    assert (run / "history.csv").is_file() and (run / "train_digits.png").is_file()
    assert (run / ".lock").is_file(), "a fit locks its folder whatever the logger"
    if "--trainer.fast_dev_run" in options:  # Lightning's fast_dev_run saves no checkpoint and no config
        return
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    tested = cli(workdir, "test", *CONFIGS, *options[:4], "--ckpt_path", "best")
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert (workdir / "lightning_logs" / "version_1" / "confusion_matrix.png").is_file()
    resumed = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "2", *options, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len((run / "history.csv").read_text().splitlines()) == 3, "the run went on in its own folder"
