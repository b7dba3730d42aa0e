"""core/augment.py: RandomAffine and HandwritingShifts on whole batches, on the device."""

from types import SimpleNamespace

import torch

from mnistlit.core.augment import HandwritingShifts, RandomAffine
from mnistlit.core.datasets import IDXDataset
from mnistlit.core.inputs import MNIST_MEAN, MNIST_STD
from mnistlit.runs.data import MNISTDataModule
from tests.helpers import draw_digits


def digits(count: int = 64) -> torch.Tensor:
    images, _ = draw_digits(count, seed=4)
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


EXTRAS = ("shear", "elastic", "stroke", "low_resolution", "blur", "noise", "specks", "lines")


NO_EXTRAS = dict.fromkeys(EXTRAS, 0)


def test_each_image_gets_its_own_transform_repeatably_with_a_seed() -> None:
    images = digits()
    torch.manual_seed(0)
    first = RandomAffine()(images)
    torch.manual_seed(0)
    again = RandomAffine()(images)
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, again)
    changed = (first - images).abs().flatten(1).amax(dim=1) > 0.1
    assert changed.all(), "every image is moved"
    assert not torch.equal(first[0] - images[0], first[1] - images[1])


def test_no_rotation_shift_or_zoom_is_the_identity() -> None:
    images = digits()
    torch.testing.assert_close(RandomAffine(degrees=0, translate=0, scale=(1, 1))(images), images)


def test_a_shift_moves_the_ink_and_fills_the_border_with_background() -> None:
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10:18, 10:18] = 1.0
    shifted = RandomAffine(degrees=0, translate=0.25, scale=(1, 1))(image.repeat(32, 1, 1, 1))
    assert shifted.min() >= 0 and shifted.max() <= 1
    # Each copy's ink centre lands somewhere else.
    rows = torch.arange(28.0).view(1, 28, 1)
    centre = (shifted[:, 0] * rows).sum(dim=(1, 2)) / shifted[:, 0].sum(dim=(1, 2))
    assert centre.std() > 1.0


def test_handwriting_shifts_without_their_extras_are_random_affine() -> None:
    images = digits()
    torch.manual_seed(0)
    affine = RandomAffine(degrees=15, translate=0.1, scale=(0.75, 1.15))(images)
    torch.manual_seed(0)
    assert torch.equal(HandwritingShifts(**NO_EXTRAS)(images), affine)


def test_handwriting_shifts_repeat_with_the_global_rng_and_stay_in_range() -> None:
    images = digits()
    torch.manual_seed(0)
    first = HandwritingShifts()(images)
    state = torch.get_rng_state()
    later = HandwritingShifts()(images)
    torch.manual_seed(0)
    assert torch.equal(HandwritingShifts()(images), first)
    torch.set_rng_state(state)  # what an exact resume restores
    assert torch.equal(HandwritingShifts()(images), later)
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    assert not torch.equal(first, later)


def test_each_handwriting_shift_changes_the_ink_its_own_way() -> None:
    images = digits()
    ink = images.sum(dim=(1, 2, 3))

    def only(**change) -> torch.Tensor:
        torch.manual_seed(0)
        return HandwritingShifts(degrees=0, translate=0, scale=(1, 1), **{**NO_EXTRAS, **change})(images)

    thicker_or_thinner = only(stroke=1.0).sum(dim=(1, 2, 3)) / ink
    assert (thicker_or_thinner > 1.2).any() and (thicker_or_thinner < 0.9).any()
    assert ((thicker_or_thinner > 1.2) | (thicker_or_thinner < 0.9)).all(), "every image changed"
    coarse = only(low_resolution=1.0)
    assert (coarse - images).abs().amax() > 0.2
    brightest = coarse.amax(dim=(1, 2, 3))
    assert torch.allclose(brightest, torch.ones(len(images))), "greys stretched, as predict does"
    redrawn = ((coarse - images).abs() > 0.1).flatten(1).float().mean(dim=1)
    assert (redrawn > 0.1).all(), "every image scanned anew, its strokes' edges redrawn"
    noisy = only(noise=0.1)
    assert ((noisy - images).abs().flatten(1).amax(dim=1) > 0).float().mean() > 0.9
    specked = only(specks=1.0)
    changed = ((specked - images).abs() > 1e-3).flatten(1).float().mean(dim=1)
    # Each pixel is hit with a probability up to 0.08: over 784 pixels, 3 standard deviations above is 0.109.
    assert changed.max() <= 0.11 and (changed > 0.01).float().mean() > 0.8
    crossed = only(lines=1.0) - only()  # the same draws before the line
    assert (crossed >= 0).all() and (crossed.flatten(1).amax(dim=1) > 0.1).all(), "a line adds ink only"
    bent = only(elastic=1.0, shear=0.3)
    assert (bent - images).abs().flatten(1).amax(dim=1).min() > 0.1


def test_the_datamodule_augments_training_batches_only_and_keeps_labels(tiny_data) -> None:
    data_dir, md5 = tiny_data
    dm = MNISTDataModule(str(data_dir), dataset=IDXDataset(md5=md5, mirrors=[]), augment=RandomAffine())
    raw = torch.from_numpy(draw_digits(16, seed=5)[0]), torch.arange(16) % 10
    plain = (raw[0].float().div(255).unsqueeze(1) - MNIST_MEAN) / MNIST_STD

    module = SimpleNamespace(dtype=torch.float32)  # batches are made in the network's dtype
    dm.trainer = SimpleNamespace(training=False, lightning_module=module)
    images, labels = dm.on_after_batch_transfer(raw, 0)
    torch.testing.assert_close(images, plain)
    dm.trainer = SimpleNamespace(training=True, lightning_module=module)
    images, labels = dm.on_after_batch_transfer(raw, 0)
    assert images.shape == plain.shape and not torch.allclose(images, plain)
    assert torch.equal(labels, raw[1])
