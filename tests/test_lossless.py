"""Nothing lost, part 2: every path that could destroy a finished run, hide a failed save or end
in a traceback, tried for real in subprocesses (issue 11; the case numbers are the issue's)."""

import hashlib
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from .conftest import (
    CLI_ENV,
    CONFIGS,
    FIT,
    ROOT,
    assert_one_clear_line,
    assert_same_weights,
    cli,
    copy_reference,
    last_ckpt,
    run_cli,
    start_cli,
    step_of,
)
from .test_pictures import draw_seven

SLOW_VALIDATION = (
    "--trainer.callbacks+",
    "tests.probes.SlowValidation",
    "--trainer.num_sanity_val_steps",
    "0",
)


def files_of(run: Path) -> dict[str, str]:
    """Every file of a run folder (the lock file aside) and its SHA-256."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def runs(workdir: Path) -> list[str]:
    folder = workdir / "lightning_logs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


# Case 1 -----------------------------------------------------------------------------------


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


# Case 2 -----------------------------------------------------------------------------------


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

    resumed = cli(workdir, *FIT, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(last_ckpt(workdir, 0), last_ckpt(workdir, 1))
    history = (workdir / "lightning_logs" / "version_1" / "history.csv").read_text()
    assert [line.split(",")[0] for line in history.splitlines()] == ["epoch", "0", "1", "2", "3"]
    assert "nan" not in history, "every row is complete"


def test_last_means_the_newest_runs_last_checkpoint_never_another_run(workdir: Path) -> None:
    for _ in range(2):
        result = cli(workdir, *FIT, "--trainer.max_epochs", "1")
        assert result.returncode == 0, result.stderr[-3000:]
    last_ckpt(workdir, 1).unlink()  # the newest run has no last.ckpt
    before = files_of(workdir / "lightning_logs" / "version_0")
    result = cli(workdir, *FIT, "--ckpt_path", "last")
    assert_one_clear_line(result, "newest training run", "version_1, has no last.ckpt", "version_0")
    assert files_of(workdir / "lightning_logs" / "version_0") == before


# Case 3 -----------------------------------------------------------------------------------


def test_a_second_process_writing_the_same_run_is_refused(workdir: Path) -> None:
    first = cli(workdir, *FIT, "--trainer.max_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    longer = (*FIT, "--trainer.max_epochs", "40", "--ckpt_path", "last", *SLOW_VALIDATION)
    writer = start_cli(workdir, *longer)
    try:
        wait_for(workdir / "validating", writer)
        second = cli(workdir, *longer)
        assert_one_clear_line(second, "lightning_logs/version_0 is in use", f"PID {writer.pid}")
    finally:
        writer.kill()
        writer.communicate()
    assert runs(workdir) == ["version_0"]
    assert (
        sorted(p.name for p in (workdir / "lightning_logs" / "version_0" / "checkpoints").glob("best*")) != []
    )
    assert len(list((workdir / "lightning_logs" / "version_0" / "checkpoints").glob("best*"))) == 1


# Case 4 -----------------------------------------------------------------------------------

# The kernel refuses to write past RLIMIT_FSIZE (EFBIG once SIGXFSZ is ignored): a full disk
# for every file over 100 KB, as a checkpoint of the seed Net (~700 KB) is.
WITH_A_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
sys.argv[0] = "mnistlit"
from mnistlit.runs.cli import main
main()
"""


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_state(workdir: Path) -> None:
    first = cli(workdir, *FIT, "--trainer.max_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    run = workdir / "lightning_logs" / "version_0"
    saved = last_ckpt(workdir, 0).read_bytes()
    history = (run / "history.csv").read_text()

    resumed = subprocess.run(
        [sys.executable, "-c", WITH_A_FULL_DISK, *FIT, "--trainer.max_epochs", "2", "--ckpt_path", "last"],
        cwd=workdir, capture_output=True, text=True, timeout=300, env=CLI_ENV,
    )  # fmt: skip
    assert_one_clear_line(
        resumed, "could not save checkpoint", "File too large", "the previous last.ckpt is unchanged"
    )
    assert last_ckpt(workdir, 0).read_bytes() == saved
    assert (run / "history.csv").read_text().startswith(history), "no completed row is lost"
    assert not list(run.rglob("*.partial*"))


# Case 5 and 15 ----------------------------------------------------------------------------


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


def test_a_run_shorter_than_an_epoch_ends_cleanly_with_its_last_checkpoint(workdir: Path) -> None:
    # Found while testing export: early stopping checked at the epoch's end found no val_acc there.
    result = cli(workdir, "fit", *CONFIGS, "--trainer.max_steps", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert step_of(last_ckpt(workdir, 0)) == 3


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_true_precisions_get_batches_in_the_networks_dtype(workdir: Path, precision: str) -> None:
    result = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1", "--trainer.precision", precision)
    assert result.returncode == 0, result.stderr[-3000:]


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


# Case 6 -----------------------------------------------------------------------------------


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


# Case 7 -----------------------------------------------------------------------------------


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


# Cases 8 to 11 ----------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels, as a decompression bomb does,
    with a few bytes of image data: opening it reads the header, decoding it would not get far."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from .conftest import tiny_config, write_synthetic_mnist

    workdir = tmp_path_factory.mktemp("trained")
    tiny_config(workdir, write_synthetic_mnist(workdir / "data" / "mnist"), max_epochs=1)
    result = cli(workdir, "fit", *CONFIGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def predict(workdir: Path, predict_dir: str) -> subprocess.CompletedProcess:
    # A process of its own, with a timeout: a FIFO opened by mistake would block forever.
    return run_cli(
        workdir, "predict", *CONFIGS, "--ckpt_path", "best", "--data.predict_dir", predict_dir, timeout=120
    )


def predicted_items(result: subprocess.CompletedProcess) -> list[bytes]:
    path = Path(result.stdout.split("predictions written to ")[1].split()[0])
    rows = path.read_bytes().splitlines()[1:]
    return [row.split(b",")[0] for row in rows]


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
    assert "decompression bomb" in skipped["bomb_20000.png"].lower()
    assert "not a regular file" in skipped["fifo.png"]
    assert Path(result.stdout.split("contact sheet: ")[1].split()[0]).is_file()


def test_a_file_name_that_looks_like_a_glob_is_read_literally(trained: Path) -> None:
    draw_seven().save(trained / "digit[1].png")
    result = predict(trained, "digit[1].png")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [Path(item.decode()).name for item in predicted_items(result)] == ["digit[1].png"]


# VmHWM: the peak resident memory of this process image (ru_maxrss carries the parent's peak across exec).
PEAK_MEMORY_OF_A_48_MEGAPIXEL_PHOTO = r"""
import re
from PIL import Image, ImageDraw
from mnistlit.deploy.images import preprocess_image

def peak_kb():
    return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1))

photo = Image.new("L", (8000, 6000), 255)
ImageDraw.Draw(photo).line([(5000, 800), (5700, 800), (5200, 4800)], fill=0, width=160)
before = peak_kb()
digit = preprocess_image(photo)
print(peak_kb() - before, int(digit.max()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_large_photo_is_shrunk_before_any_float_copy() -> None:
    from mnistlit.deploy.images import preprocess_image

    from .test_pictures import assert_mnist_like

    photo = draw_seven(size=(4000, 3000), origin=(2500, 400)).resize((8000, 6000))
    assert_mnist_like(preprocess_image(photo))
    # Float64 copies of 48 megapixels would take 384 MB each; the shrunk photo needs a few MB.
    result = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_OF_A_48_MEGAPIXEL_PHOTO], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    extra_kb, ink = map(int, result.stdout.split())
    assert ink > 200 and extra_kb < 100_000, f"preprocessing took {extra_kb // 1024} MB more"


# Case 12 ----------------------------------------------------------------------------------


def test_predict_under_ddp_is_refused_with_one_line(trained: Path) -> None:
    ddp = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    result = cli(trained, "predict", *CONFIGS, "--ckpt_path", "best", *ddp)
    assert_one_clear_line(result, "predict runs in one process")


# Case 14 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda path: path.write_bytes(b""), "the file is empty"),
        (lambda path: path.write_text("epoch,loss\n0,1.5\n"), "not a complete PyTorch checkpoint"),
        (lambda path: path.mkdir(), "it is a folder, not a checkpoint file"),
    ],
    ids=["empty", "text", "folder"],
)
def test_an_unloadable_checkpoint_says_why(workdir: Path, make, reason) -> None:
    make(workdir / "bad.ckpt")
    assert_one_clear_line(cli(workdir, "test", *CONFIGS, "--ckpt_path", "bad.ckpt"), "bad.ckpt", reason)


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
