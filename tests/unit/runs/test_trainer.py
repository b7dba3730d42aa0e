"""mnistlit.Trainer from plain Python, and the run folder whatever the logger: in-process."""

import functools
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from mnistlit import LitClassifier, Trainer
from mnistlit.core.errors import MnistlitError
from mnistlit.runs import precision
from mnistlit.runs.cli import main
from tests.helpers import CONFIGS, assert_same_weights, tiny_config, weights

QUIET = {"enable_model_summary": False, "enable_progress_bar": False, "deterministic": True}


def files_in(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tfevents" not in p.name}


class LearningRates(Callback):
    """The rate each optimizer step trained with."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_a_python_fit_writes_the_run_folder_the_cli_writes(data) -> None:
    torch.manual_seed(0)
    Trainer(max_epochs=2, **QUIET).fit(LitClassifier(), data())
    run = Path("lightning_logs/version_0")
    (best,) = (run / "checkpoints").glob("best-epoch=*-val_acc=*.ckpt")
    assert {
        "history.csv",
        "learning_curves.png",
        "train_digits.png",
        "hparams.yaml",
        "checkpoints/last.ckpt",
    } <= (files_in(run))
    assert len((run / "history.csv").read_text().splitlines()) == 3  # header and two epochs
    assert sorted(os.listdir()) == ["data", "lightning_logs"], "nothing outside lightning_logs/"


def test_a_python_run_resumed_from_last_ends_with_bit_identical_weights(data, tmp_path: Path) -> None:
    torch.manual_seed(0)
    Trainer(max_epochs=2, **QUIET).fit(LitClassifier(), data())
    torch.manual_seed(0)
    Trainer(max_epochs=1, **QUIET).fit(LitClassifier(), data())  # version_1: the first of two epochs
    torch.manual_seed(123)  # whatever the process did since, the checkpoint's RNG state wins
    Trainer(max_epochs=2, **QUIET).fit(LitClassifier(), data(), ckpt_path="last")
    runs = Path("lightning_logs")
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"], "resumed in its own folder"
    assert_same_weights(runs / "version_0/checkpoints/last.ckpt", runs / "version_1/checkpoints/last.ckpt")
    assert len((runs / "version_1/history.csv").read_text().splitlines()) == 3


def test_the_cli_finds_and_tests_a_run_trained_from_python(data, capsys) -> None:
    Trainer(max_epochs=1, **QUIET).fit(LitClassifier(), data())
    dataset = {"name": "mnist", "md5": data.keywords["dataset"].md5, "mirrors": []}
    settings = {"data_dir": data.keywords["data_dir"], "batch_size": 32, "val_size": 100, "dataset": dataset}
    Path("tiny.yaml").write_text(yaml.safe_dump({"data": settings}))
    main(["test", *CONFIGS[:2], "--config", "tiny.yaml", "--ckpt_path", "best"])
    assert "test_acc" in capsys.readouterr().out
    assert (Path("lightning_logs/version_1") / "confusion_matrix.png").is_file()


def test_a_test_after_a_fit_on_the_same_trainer_writes_beside_it(data) -> None:
    trainer = Trainer(max_epochs=1, **QUIET)
    trainer.fit(LitClassifier(), data())
    trainer.test(datamodule=data(), ckpt_path="best")
    run = Path("lightning_logs/version_0")
    assert {"confusion_matrix.png", "misclassified.png", "history.csv"} <= files_in(run)
    assert [p.name for p in Path("lightning_logs").iterdir()] == ["version_0"]


@pytest.mark.parametrize(
    "logger",
    [CSVLogger(save_dir="."), False, "fast_dev_run"],
    ids=["csv", "no logger", "fast_dev_run"],
)
def test_the_run_folder_does_not_depend_on_the_logger(data, logger) -> None:
    options = {"fast_dev_run": 2} if logger == "fast_dev_run" else {"logger": logger, "max_epochs": 1}
    trainer = Trainer(**options, **QUIET)
    trainer.fit(LitClassifier(), data())
    run = Path("lightning_logs/version_0")
    assert trainer.log_dir == str(run.absolute()) or Path(trainer.log_dir) == run
    assert "history.csv" in files_in(run) and "train_digits.png" in files_in(run)
    if logger != "fast_dev_run":  # fast_dev_run saves no checkpoint, by Lightning's design
        assert "checkpoints/last.ckpt" in files_in(run)
    if isinstance(logger, CSVLogger):
        assert "metrics.csv" in files_in(run), "the CSV logger writes into the run folder too"
    assert sorted(os.listdir()) == ["data", "lightning_logs"], "nothing outside lightning_logs/"
    assert not (run / ".lock").exists() or (run / ".lock").read_text().strip() == str(os.getpid())


def test_each_always_on_part_has_a_switch(data) -> None:
    Trainer(max_epochs=1, history=False, pictures=False, last_checkpoint=False, **QUIET).fit(
        LitClassifier(), data()
    )
    files = files_in(Path("lightning_logs/version_0"))
    assert not {"history.csv", "learning_curves.png", "train_digits.png", "checkpoints/last.ckpt"} & files
    assert any(name.startswith("checkpoints/best-") for name in files)


def test_without_a_run_folder_the_trainer_is_lightnings(data) -> None:
    trainer = Trainer(max_epochs=1, run_folder=False, **QUIET)
    trainer.fit(LitClassifier(), data())
    assert trainer.run_dir is None
    assert Path(trainer.log_dir) == Path("lightning_logs/version_0")  # TensorBoard's own choice


def test_a_one_cycle_schedule_lasts_the_steps_a_limited_run_takes(data) -> None:
    one_cycle = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01, total_steps=None)
    model = LitClassifier(lr_scheduler=one_cycle, lr_scheduler_interval="step")
    rates = LearningRates()
    trainer = Trainer(max_epochs=2, limit_train_batches=0.25, callbacks=[rates], **QUIET)
    trainer.fit(model, data())
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == 2 * int(44 * 0.25)
    assert scheduler.total_steps == trainer.global_step
    assert max(rates.rates) == pytest.approx(0.01, rel=0.05), "the cycle reached its peak"
    assert rates.rates[-1] == pytest.approx(0.01 / 25 / 1e4), "and ended at its final rate"
    last_row = Path("lightning_logs/version_0/history.csv").read_text().splitlines()[-1].split(",")
    assert float(last_row[5]) == pytest.approx(rates.rates[-1]), "history.csv shows where the rate ended"


def test_a_monitor_the_model_never_logs_is_refused_before_training(data) -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    trainer = Trainer(max_epochs=1, callbacks=[EarlyStopping(monitor="val_accuracy")], **QUIET)
    with pytest.raises(MnistlitError, match="early stopping monitors 'val_accuracy'"):
        trainer.fit(LitClassifier(), data())
    assert not list(Path("lightning_logs").glob("version_*")), "a refused run leaves no folder"


def test_config_yaml_records_the_precision_that_ran(tiny_data, tmp_path: Path, monkeypatch) -> None:
    _, md5 = tiny_data
    monkeypatch.chdir(tmp_path)
    tiny_config(tmp_path, md5, max_epochs=1)
    main(["fit", *CONFIGS, "--trainer.precision", "bf16-mixed"])
    config = yaml.safe_load(Path("lightning_logs/version_0/config.yaml").read_text())
    ran, _ = precision.choose("bf16-mixed", "auto")
    assert config["trainer"]["precision"] == ran
    weights(Path("lightning_logs/version_0/checkpoints/last.ckpt"))  # and the run is whole


def test_the_history_is_a_data_frame_of_history_csv_or_its_rows_without_pandas(data, monkeypatch) -> None:
    import pandas

    trainer = Trainer(max_epochs=2, **QUIET)
    trainer.fit(LitClassifier(), data())
    frame = trainer.history
    pandas.testing.assert_frame_equal(frame, pandas.read_csv("lightning_logs/version_0/history.csv"))
    assert list(frame["epoch"]) == [0, 1]
    monkeypatch.setitem(sys.modules, "pandas", None)  # as where pandas is not installed
    assert trainer.history == frame.to_dict("records")
