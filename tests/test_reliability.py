"""Never lose work: exact resume after SIGKILL, clean stops, safe loading, clear refusals."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnistlit.runs.folders import resolve
from mnistlit.runs.precision import cpu_bf16_instructions

from .conftest import (
    CONFIGS,
    FIT,
    assert_one_clear_line,
    assert_same_weights,
    cli,
    copy_reference,
    last_ckpt,
    start_cli,
    weights,
)


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

    resumed = cli(workdir, *FIT, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "lightning_logs/version_1/checkpoints/last.ckpt" in resumed.stderr + resumed.stdout

    assert_same_weights(last_ckpt(workdir, 0), last_ckpt(workdir, 1))
    for version in (0, 1):
        folder = last_ckpt(workdir, version).parent
        assert sorted(p.name for p in folder.glob("last*.ckpt")) == ["last.ckpt"]
    best = resolve("best", workdir / "lightning_logs")
    (reference_best,) = last_ckpt(workdir, 0).parent.glob("best-*.ckpt")
    assert best.parent == last_ckpt(workdir, 1).parent and best.name == reference_best.name
    with open(workdir / "lightning_logs" / "version_1" / "history.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()] == ["epoch", "0", "1", "2", "3"]
    runs = sorted(p.name for p in (workdir / "lightning_logs").iterdir())
    assert runs == ["version_0", "version_1"], "the resumed run must log into its own folder"
    assert len(list((workdir / "lightning_logs" / "version_1").glob("events.out.tfevents.*"))) == 2


@pytest.mark.slow
def test_a_finished_run_continued_from_its_last_checkpoint_matches_a_longer_run(
    workdir: Path, reference_run
) -> None:
    copy_reference(reference_run, workdir)
    short = cli(workdir, *FIT, "--trainer.max_epochs", "1")
    assert short.returncode == 0, short.stderr[-3000:]
    assert torch.load(last_ckpt(workdir, 1), map_location="cpu", weights_only=True)["global_step"] == 44

    continued = cli(workdir, *FIT, "--ckpt_path", "last")
    assert continued.returncode == 0, continued.stderr[-3000:]
    assert torch.load(last_ckpt(workdir, 1), map_location="cpu", weights_only=True)["global_step"] == 4 * 44
    assert_same_weights(last_ckpt(workdir, 0), last_ckpt(workdir, 1))


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


class _CreatesAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(workdir: Path) -> None:
    marker = workdir / "pwned"
    torch.save({"state_dict": {}, "payload": _CreatesAFile(marker)}, workdir / "evil.ckpt")
    result = cli(workdir, "test", *CONFIGS, "--ckpt_path", "evil.ckpt")
    assert_one_clear_line(result, "cannot load checkpoint evil.ckpt", "refusing to load it")
    assert not marker.exists()

    code = "import sys\nfrom mnistlit import LitClassifier\nLitClassifier.load_from_checkpoint(sys.argv[1])"
    loaded = subprocess.run([sys.executable, "-c", code, str(workdir / "evil.ckpt")], capture_output=True)
    assert loaded.returncode != 0
    assert not marker.exists()


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    from .conftest import tiny_config, write_synthetic_mnist

    workdir = tmp_path_factory.mktemp("good")
    tiny_config(workdir, write_synthetic_mnist(workdir / "data" / "mnist"), max_epochs=1)
    result = cli(workdir, "fit", *CONFIGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return last_ckpt(workdir, 0).read_bytes()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda good: good[: len(good) // 2], "cannot load checkpoint bad.ckpt"),
        (lambda good: random.Random(0).randbytes(5000), "cannot load checkpoint bad.ckpt"),
        (lambda good: b"", "cannot load checkpoint bad.ckpt"),
    ],
    ids=["truncated", "random-bytes", "empty"],
)
def test_a_damaged_checkpoint_is_one_clear_line(workdir: Path, good_checkpoint: bytes, make, message) -> None:
    (workdir / "bad.ckpt").write_bytes(make(good_checkpoint))
    assert_one_clear_line(cli(workdir, "test", *CONFIGS, "--ckpt_path", "bad.ckpt"), message)


def test_a_file_that_is_not_a_lightning_checkpoint_is_refused(workdir: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, workdir / "plain.pt")
    result = cli(workdir, "test", *CONFIGS, "--ckpt_path", "plain.pt")
    assert_one_clear_line(result, "plain.pt", "not a Lightning checkpoint")


def test_a_checkpoint_of_another_model_is_refused(workdir: Path) -> None:
    other = {"state_dict": {"encoder.weight": torch.zeros(4, 4)}, "hyper_parameters": {"hidden_size": 4}}
    torch.save(other, workdir / "other.ckpt")
    result = cli(workdir, "test", *CONFIGS, "--ckpt_path", "other.ckpt")
    assert_one_clear_line(result, "other.ckpt")

    torch.save({"state_dict": {"net.layers.0.weight": torch.zeros(1)}}, workdir / "shape.ckpt")
    result = cli(workdir, "test", *CONFIGS, "--ckpt_path", "shape.ckpt")
    assert_one_clear_line(result, "shape.ckpt does not fit this model")


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


def test_a_nan_loss_stops_the_run_and_keeps_only_finite_checkpoints(workdir: Path) -> None:
    result = cli(workdir, *FIT, "--model.optimizer.init_args.lr", "1e12", "--trainer.log_every_n_steps", "3")
    assert_one_clear_line(result, "the training loss became nan/inf at step", "stopped without saving")
    for path in workdir.glob("lightning_logs/*/checkpoints/*.ckpt"):
        assert all(torch.isfinite(t).all() for t in weights(path).values()), path


def test_two_runs_started_together_get_their_own_folders(workdir: Path) -> None:
    args = ("fit", *CONFIGS, "--trainer.max_epochs", "1")
    first, second = start_cli(workdir, *args), start_cli(workdir, *args)
    for process in (first, second):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    runs = sorted((workdir / "lightning_logs").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run in runs:
        assert (run / "config.yaml").is_file()
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1


def test_resuming_from_a_checkpoint_outside_the_runs_folder_starts_a_new_run(workdir: Path) -> None:
    first = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    (workdir / "copied.ckpt").write_bytes(last_ckpt(workdir, 0).read_bytes())
    resumed = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "2", "--ckpt_path", "copied.ckpt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert last_ckpt(workdir, 1).is_file()
    resumed_state = torch.load(last_ckpt(workdir, 1), map_location="cpu", weights_only=True)
    assert resumed_state["global_step"] == 2 * 44  # it went on from the copied epoch, not from zero
    assert [row["epoch"] for row in resumed_state["callbacks"]["EpochHistory"]["rows"]] == [0, 1]
