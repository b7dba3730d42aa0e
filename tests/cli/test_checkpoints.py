"""Checkpoints through the CLI: best and last, resuming, and every file a run must refuse to trust."""

import hashlib
import pickle
import random
from pathlib import Path

import pytest
import torch

from mnistlit import LitClassifier
from tests.helpers import (
    CONFIGS,
    FIT,
    assert_one_clear_line,
    assert_same_weights,
    cli,
    copy_reference,
    last_ckpt,
    runs,
)


def files_of(run: Path) -> dict[str, str]:
    """Every file of a run folder (the lock file aside) and its SHA-256."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


class _CreatesAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def good_checkpoint(trained: Path) -> bytes:
    return last_ckpt(trained, 0).read_bytes()


@pytest.mark.slow
def test_fit_from_a_best_checkpoint_starts_a_new_run_and_leaves_the_old_one_byte_identical(
    workdir: Path,
) -> None:
    first = cli(workdir, *FIT, "--trainer.max_epochs", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    run = workdir / "lightning_logs" / "version_0"
    before = files_of(run)

    again = cli(workdir, *FIT, "--trainer.max_epochs", "3", "--ckpt_path", "best")
    assert again.returncode == 0, again.stderr[-3000:]
    assert files_of(run) == before, "the finished run's files must not change"
    assert runs(workdir) == ["version_0", "version_1"]
    assert last_ckpt(workdir, 1).is_file()


def test_a_resume_with_another_data_split_is_refused(workdir: Path) -> None:
    first = cli(workdir, *FIT, "--trainer.max_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    before = files_of(workdir / "lightning_logs" / "version_0")
    result = cli(workdir, *FIT, "--ckpt_path", "last", "--data.val_size", "200")
    assert_one_clear_line(result, "another train/validation split", "data.val_size 100 -> 200")
    assert files_of(workdir / "lightning_logs" / "version_0") == before
    assert runs(workdir) == ["version_0"]


def test_last_means_the_newest_runs_last_checkpoint_never_another_run(workdir: Path) -> None:
    for _ in range(2):
        result = cli(workdir, *FIT, "--trainer.max_epochs", "1")
        assert result.returncode == 0, result.stderr[-3000:]
    last_ckpt(workdir, 1).unlink()  # the newest run has no last.ckpt
    before = files_of(workdir / "lightning_logs" / "version_0")
    result = cli(workdir, *FIT, "--ckpt_path", "last")
    assert_one_clear_line(result, "newest training run", "version_1, has no last.ckpt", "version_0")
    assert files_of(workdir / "lightning_logs" / "version_0") == before


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda path: path.write_bytes(b""), "the file is empty"),
        (
            lambda path: path.write_text("epoch,loss\n0,1.5\n"),
            "not a PyTorch checkpoint: the file is in neither",
        ),
        (lambda path: path.mkdir(), "it is a folder, not a checkpoint file"),
    ],
    ids=["empty", "text", "folder"],
)
def test_an_unloadable_checkpoint_says_why(workdir: Path, make, reason) -> None:
    make(workdir / "bad.ckpt")
    assert_one_clear_line(cli(workdir, "test", *CONFIGS, "--ckpt_path", "bad.ckpt"), "bad.ckpt", reason)


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


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(workdir: Path) -> None:
    marker = workdir / "pwned"
    torch.save({"state_dict": {}, "payload": _CreatesAFile(marker)}, workdir / "evil.ckpt")
    result = cli(workdir, "test", *CONFIGS, "--ckpt_path", "evil.ckpt")
    assert_one_clear_line(result, "cannot load checkpoint evil.ckpt", "refusing to load it")
    assert not marker.exists()

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        LitClassifier.load_from_checkpoint(workdir / "evil.ckpt")  # Lightning's own loader, from Python
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda good: good[: len(good) // 2], "cannot load checkpoint bad.ckpt"),
        (lambda good: random.Random(0).randbytes(50_000), "bad.ckpt: not a PyTorch checkpoint"),
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


@pytest.mark.parametrize("subcommand", ["describe", "test", "export"])
def test_every_subcommand_refuses_weights_that_do_not_fit_their_network(
    workdir: Path, subcommand: str
) -> None:
    """The hyperparameters name StrongNet, the weights are Net's; then a weight of the wrong shape."""
    fitted = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    checkpoint = torch.load(last_ckpt(workdir, 0), map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["net"] = {"class_path": "mnistlit.core.nets.StrongNet"}
    torch.save(checkpoint, workdir / "renamed.ckpt")
    result = cli(workdir, subcommand, *CONFIGS, "--ckpt_path", "renamed.ckpt")
    assert_one_clear_line(result, "renamed.ckpt does not fit this model")

    checkpoint = torch.load(last_ckpt(workdir, 0), map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["net.layers.0.weight"] = torch.zeros(16, 1, 3, 3)
    torch.save(checkpoint, workdir / "reshaped.ckpt")
    result = cli(workdir, subcommand, *CONFIGS, "--ckpt_path", "reshaped.ckpt")
    assert_one_clear_line(result, "reshaped.ckpt does not fit this model", "other shape: net.layers.0.weight")


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


def test_a_run_resumed_from_its_last_checkpoint_by_absolute_path_goes_on_in_its_folder(workdir: Path) -> None:
    first = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    last = str(last_ckpt(workdir, 0).resolve())
    resumed = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "2", "--ckpt_path", last)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert runs(workdir) == ["version_0"], "its TensorBoard events too, not a second folder of them"
    assert len(list((workdir / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))) == 2


def test_best_after_its_file_was_deleted_names_the_deleted_file(workdir: Path) -> None:
    fitted = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    (best,) = last_ckpt(workdir, 0).parent.glob("best-*.ckpt")
    best.unlink()
    result = cli(workdir, "test", *CONFIGS, "--ckpt_path", "best")
    assert_one_clear_line(result, f"{best.name}, the best checkpoint of the newest run", "no longer exists")
