"""Resource limits in a child process: a full disk (RLIMIT_FSIZE) and memory for a large photo."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    CLI_ENV,
    FIT,
    PYTHON,
    WITH_A_FULL_DISK,
    assert_mnist_like,
    assert_one_clear_line,
    cli,
    draw_seven,
    last_ckpt,
)

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


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_state(workdir: Path) -> None:
    first = cli(workdir, *FIT, "--trainer.max_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    run = workdir / "lightning_logs" / "version_0"
    saved = last_ckpt(workdir, 0).read_bytes()
    history = (run / "history.csv").read_text()

    resumed = subprocess.run(
        [PYTHON, "-c", WITH_A_FULL_DISK, *FIT, "--trainer.max_epochs", "2", "--ckpt_path", "last"],
        cwd=workdir, capture_output=True, text=True, timeout=300, env=CLI_ENV,
    )  # fmt: skip
    assert_one_clear_line(
        resumed, "could not save checkpoint", "File too large", "the previous last.ckpt is unchanged"
    )
    assert last_ckpt(workdir, 0).read_bytes() == saved
    assert (run / "history.csv").read_text().startswith(history), "no completed row is lost"
    assert not list(run.rglob("*.partial*"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_large_photo_is_shrunk_before_any_float_copy() -> None:
    from mnistlit.deploy.images import preprocess_image

    photo = draw_seven(size=(4000, 3000), origin=(2500, 400)).resize((8000, 6000))
    assert_mnist_like(preprocess_image(photo))
    # Float64 copies of 48 megapixels would take 384 MB each; the shrunk photo needs a few MB.
    result = subprocess.run(
        [PYTHON, "-c", PEAK_MEMORY_OF_A_48_MEGAPIXEL_PHOTO], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    extra_kb, ink = map(int, result.stdout.split())
    assert ink > 200 and extra_kb < 100_000, f"preprocessing took {extra_kb // 1024} MB more"
