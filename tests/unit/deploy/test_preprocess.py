"""deploy/preprocess.py and deploy/images.py: photos and scans of digits made MNIST-like, files read
safely."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mnistlit.deploy.images import load_digits, preprocess_image
from tests.helpers import (
    assert_mnist_like,
    draw_seven,
)


def test_dark_ink_on_light_paper_off_centre_becomes_an_mnist_digit() -> None:
    assert_mnist_like(preprocess_image(draw_seven()))


def test_light_ink_on_dark_rgb_is_kept_the_right_way_round() -> None:
    assert_mnist_like(preprocess_image(draw_seven(ink=(250, 250, 250), paper=(10, 20, 30), mode="RGB")))


def test_a_transparent_png_uses_its_alpha_as_ink(tmp_path: Path) -> None:
    image = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(image).line([(40, 30), (60, 170)], fill=(0, 0, 0, 255), width=12)
    image.save(tmp_path / "one.png")
    with Image.open(tmp_path / "one.png") as loaded:
        assert_mnist_like(preprocess_image(loaded))


def test_a_16_bit_png_works(tmp_path: Path) -> None:
    grey = np.asarray(draw_seven(), dtype=np.uint16) * 257
    Image.fromarray(grey).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as loaded:
        assert loaded.mode.startswith("I")
        assert_mnist_like(preprocess_image(loaded))


def test_unreadable_and_blank_files_are_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    draw_seven().save(tmp_path / "seven.jpg")
    (tmp_path / "notes.png").write_text("this is text, not a picture")
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.bmp")
    images, used, skipped = load_digits(sorted(tmp_path.iterdir()))
    assert images.shape == (1, 28, 28) and used == [tmp_path / "seven.jpg"]
    assert {path.name for path, _ in skipped} == {"notes.png", "blank.bmp"}
