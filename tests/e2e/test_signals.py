"""Real signals at real moments (a step, validation, start-up, test): what is saved and said."""

import csv
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mnistlit.runs.folders import resolve
from mnistlit.runs.precision import cpu_bf16_instructions
from tests.helpers import (
    CONFIGS,
    FIT,
    SLOW_VALIDATION,
    assert_same_weights,
    cli,
    copy_reference,
    last_ckpt,
    runs,
    start_cli,
    step_of,
    wait_for,
    weights,
)


def history_of(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def assert_same_history(workdir: Path) -> None:
    """The resumed run's history.csv (version_1) has the uninterrupted run's rows (version_0), to the
    digits fit prints, every column but the seconds: the interrupted epoch's train_loss and
    train_acc cover all its steps, not only those after the resume."""
    logs = workdir / "lightning_logs"

    def printed(rows: list[dict[str, str]]) -> list[list[str]]:
        columns = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
        return [[row["epoch"]] + [f"{float(row[c]):.4f}" for c in columns[1:]] for row in rows]

    reference, resumed = printed(history_of(logs / "version_0")), printed(history_of(logs / "version_1"))
    assert [row[0] for row in resumed] == ["0", "1", "2", "3"]
    assert resumed == reference


def wait_for_checkpoint(path: Path, process: subprocess.Popen, at_least: int) -> None:
    """Wait until the periodic last.ckpt shows the run at least ``at_least`` steps in."""
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached the checkpoint"
        if (
            path.exists()
            and torch.load(path, map_location="cpu", weights_only=True)["global_step"] >= at_least
        ):
            return
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_during_validation_saves_after_it_and_resumes_bit_identical(
    workdir: Path, reference_run, stop
) -> None:
    copy_reference(reference_run, workdir)

    process = start_cli(workdir, *FIT, *SLOW_VALIDATION)
    wait_for(workdir / "validating", process)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    saved = step_of(last_ckpt(workdir, 1))
    assert saved >= 44, "saved after the first epoch's validation, not before it"
    name = "SIGTERM" if stop == signal.SIGTERM else "Ctrl-C"
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"mnistlit: stopped by {name} at step {saved}; saved "), last_line

    # What the stop left: epoch 0's row (its validation was over) and the curves.
    stopped = workdir / "lightning_logs" / "version_1"
    assert [row["epoch"] for row in history_of(stopped)] == ["0"]
    assert (stopped / "learning_curves.png").stat().st_size > 0

    resumed = cli(workdir, *FIT, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(last_ckpt(workdir, 0), last_ckpt(workdir, 1))
    assert_same_history(workdir)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_stop_during_start_up_is_one_line(workdir: Path, stop) -> None:
    process = start_cli(workdir, "fit", *CONFIGS)
    time.sleep(1.5)  # importing torch and Lightning
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    name = "Ctrl-C" if stop == signal.SIGINT else "SIGTERM"
    assert process.returncode != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert (
        stderr.strip().splitlines()[-1] == f"mnistlit: stopped by {name} during start-up; nothing was saved"
    )
    assert runs(workdir) == []


def test_sigterm_during_test_says_test_did_not_finish(trained: Path) -> None:
    before = runs(trained)
    process = start_cli(
        trained, "test", *CONFIGS, "--ckpt_path", "best", "--trainer.callbacks+", "tests.probes.SlowTest"
    )
    wait_for(trained / "testing", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    (trained / "testing").unlink()
    assert process.returncode != 0 and "Traceback" not in stderr
    assert (
        stderr.strip().splitlines()[-1]
        == "mnistlit: stopped by SIGTERM; test did not finish and wrote no results"
    )
    assert runs(trained) == before, "the unfinished test leaves no run folder"


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_resumes_to_bit_identical_weights(
    workdir: Path, reference_run, stop: signal.Signals
) -> None:
    copy_reference(reference_run, workdir)

    process = start_cli(workdir, *FIT)
    # Any step: inside an epoch, on an epoch's last batch, in the first epoch or a later one.
    wait_for_checkpoint(last_ckpt(workdir, 1), process, at_least=random.randrange(5, 140))
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    stopped_at = torch.load(last_ckpt(workdir, 1), map_location="cpu", weights_only=True)["global_step"]
    assert stopped_at < 4 * 44
    if stop != signal.SIGKILL:
        name = "SIGTERM" if stop == signal.SIGTERM else "Ctrl-C"
        last_line = stderr.strip().splitlines()[-1]
        assert last_line.startswith(f"mnistlit: stopped by {name} at step {stopped_at}; saved "), last_line
        assert "Traceback" not in stderr and "weights_only" not in stderr

    started = time.monotonic()
    resumed = cli(workdir, *FIT, "--ckpt_path", "last")
    took = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "lightning_logs/version_1/checkpoints/last.ckpt" in resumed.stderr + resumed.stdout
    seconds = [
        float(line.split(", ")[1].split()[0]) for line in resumed.stdout.splitlines() if ": step " in line
    ]
    assert seconds and max(seconds) <= took, f"an epoch line claims more than the {took:.1f} s the run took"

    assert_same_weights(last_ckpt(workdir, 0), last_ckpt(workdir, 1))
    for version in (0, 1):
        folder = last_ckpt(workdir, version).parent
        assert sorted(p.name for p in folder.glob("last*.ckpt")) == ["last.ckpt"]
    best = resolve("best", workdir / "lightning_logs")
    (reference_best,) = last_ckpt(workdir, 0).parent.glob("best-*.ckpt")
    assert best.parent == last_ckpt(workdir, 1).parent and best.name == reference_best.name
    assert_same_history(workdir)
    runs = sorted(p.name for p in (workdir / "lightning_logs").iterdir())
    assert runs == ["version_0", "version_1"], "the resumed run must log into its own folder"
    assert len(list((workdir / "lightning_logs" / "version_1").glob("events.out.tfevents.*"))) == 2


@pytest.mark.slow
def test_a_bf16_mixed_run_killed_at_any_step_resumes_to_bit_identical_weights(workdir: Path) -> None:
    bf16 = (*FIT, "--trainer.precision", "bf16-mixed")
    whole = cli(workdir, *bf16)
    assert whole.returncode == 0, whole.stderr[-3000:]
    chosen = (
        "bf16-mixed: this CPU computes bf16" if cpu_bf16_instructions() else "32-true: bf16-mixed was asked"
    )
    assert f"mnistlit: precision {chosen}" in whole.stderr

    process = start_cli(workdir, *bf16)
    wait_for_checkpoint(last_ckpt(workdir, 1), process, at_least=random.randrange(5, 140))
    process.kill()
    process.communicate(timeout=120)
    resumed = cli(workdir, *bf16, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(last_ckpt(workdir, 0), last_ckpt(workdir, 1))
    assert all(
        w.dtype == torch.float32 for w in weights(last_ckpt(workdir, 1)).values() if w.is_floating_point()
    )
