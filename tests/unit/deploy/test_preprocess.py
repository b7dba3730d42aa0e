"""deploy/preprocess.py and deploy/images.py: photos and scans of digits made MNIST-like, files read
safely."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnistlit.deploy.images import load_digits, preprocess_image
from mnistlit.deploy.summary import run_relative
from tests.helpers import (
    assert_mnist_like,
    draw_digits,
    draw_seven,
    png_header_only,
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


def dot(size: int = 280, diameter: int = 18) -> Image.Image:
    """A tap on the drawing pad: one round dot of the pen's width on white."""
    image = Image.new("L", (size, size), 255)
    ImageDraw.Draw(image).ellipse([(130, 130), (130 + diameter, 130 + diameter)], fill=0)
    return image


def test_a_dot_is_too_little_ink_to_be_a_digit_but_a_narrow_one_is_read() -> None:
    with pytest.raises(ValueError, match=r"too little ink to be a digit \(a dot\?\): draw a digit"):
        preprocess_image(dot())
    one = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(one).line([(140, 100), (140, 160)], fill=0, width=18)  # a short 1: 60 of 280 pixels
    assert_mnist_like(preprocess_image(one))
    assert preprocess_image(Image.fromarray(255 - draw_digits(1, seed=0)[0][0])).shape == (28, 28)
    assert_mnist_like(preprocess_image(draw_seven(size=(6000, 6000), origin=(2000, 1000))))  # 3% of a photo


def test_a_checkpoint_is_shown_from_its_run_folder_without_this_machines_folders() -> None:
    assert run_relative("/home/me/work/lightning_logs/version_3/checkpoints/epoch=2.ckpt") == (
        "version_3/checkpoints/epoch=2.ckpt"
    )
    assert run_relative("/srv/models/mnist.ckpt") == "mnist.ckpt"


def test_files_gone_while_read_and_images_over_pillows_own_limit_name_their_cause(
    tmp_path: Path, monkeypatch
) -> None:
    draw_seven().save(tmp_path / "seven.png")
    draw_seven().save(tmp_path / "deleted.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "huge.png").write_bytes(png_header_only(20_000, 20_000))  # 400 MP: over twice Pillow's 179 MP
    files = sorted(tmp_path.iterdir())
    (tmp_path / "deleted.png").unlink()  # after the folder was listed, before it is read
    real_open = Image.open

    def deleted_meanwhile(path, *args, **kwargs):
        if Path(path).name == "seven.png":  # listed and checked, then gone when opened
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_open(path, *args, **kwargs)

    draw_seven().save(tmp_path / "kept.png")
    monkeypatch.setattr(Image, "open", deleted_meanwhile)
    images, used, skipped = load_digits([*files, tmp_path / "kept.png"], max_pixels=1_000_000)
    assert used == [tmp_path / "kept.png"] and images.shape == (1, 28, 28)
    assert dict((path.name, why) for path, why in skipped) == {
        "deleted.png": "no longer there (deleted or moved while predict ran)",
        "seven.png": "no longer there (deleted or moved while predict ran)",
        "link.png": "a link to a missing file",
        "huge.png": "over the limit of 1,000,000 pixels (data.max_image_pixels)",
    }
