"""Training runs at their edges: shorter than an epoch, other precisions, schedules, a NaN loss."""

from pathlib import Path

import pytest
import torch

from tests.helpers import CONFIGS, FIT, ROOT, assert_one_clear_line, cli, last_ckpt, step_of, weights


def test_a_run_shorter_than_an_epoch_ends_cleanly_with_its_last_checkpoint(workdir: Path) -> None:
    # Found while testing export: early stopping checked at the epoch's end found no val_acc there.
    result = cli(workdir, "fit", *CONFIGS, "--trainer.max_steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert step_of(last_ckpt(workdir, 0)) == 3


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_true_precisions_get_batches_in_the_networks_dtype(workdir: Path, precision: str) -> None:
    result = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1", "--trainer.precision", precision)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_one_cycle_schedule_follows_the_batch_size_and_the_epochs(workdir: Path) -> None:
    speedrun = ("fit", "--config", str(ROOT / "configs" / "speedrun.yaml"), "--config", "tiny.yaml")
    # 175 steps an epoch for 3 epochs: more than any length the config could have fixed by hand.
    result = cli(workdir, *speedrun, "--data.batch_size", "8", "--trainer.max_epochs", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(last_ckpt(workdir, 0), map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 * 175
    assert state["lr_schedulers"][0]["total_steps"] == 3 * 175

    longer = cli(
        workdir, *speedrun, "--data.batch_size", "8", "--trainer.max_epochs", "4", "--ckpt_path", "last"
    )
    assert_one_clear_line(longer, "OneCycleLR lasts 525 steps but this run needs 700")


def test_the_nan_message_names_the_last_checkpoint_that_was_saved(workdir: Path) -> None:
    poisoned = ("--trainer.callbacks+", "tests.probes.PoisonAtStep12", "--trainer.log_every_n_steps", "3")
    result = cli(workdir, *FIT, *poisoned)
    assert_one_clear_line(
        result,
        "nan/inf at step 12",
        "Last good checkpoint: ",
        "lightning_logs/version_0/checkpoints/last.ckpt",
    )
    assert step_of(last_ckpt(workdir, 0)) == 10


def test_a_nan_loss_stops_the_run_and_keeps_only_finite_checkpoints(workdir: Path) -> None:
    result = cli(workdir, *FIT, "--model.optimizer.init_args.lr", "1e12", "--trainer.log_every_n_steps", "3")
    assert_one_clear_line(result, "the training loss became nan/inf at step", "stopped without saving")
    for path in workdir.glob("lightning_logs/*/checkpoints/*.ckpt"):
        assert all(torch.isfinite(t).all() for t in weights(path).values()), path
