"""runs/pictures.py: the pictures a run publishes."""

import torch

from mnistlit.core.augment import HandwritingShifts
from mnistlit.runs.pictures import as_augmented
from mnistlit.runs.plots import digit_grid
from tests.helpers import (
    draw_digits,
)


def test_the_augmented_training_digits_leave_the_runs_random_draws_alone() -> None:
    digits = torch.from_numpy(draw_digits(9, seed=3)[0])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = as_augmented(digits, HandwritingShifts())
    assert torch.equal(torch.get_rng_state(), state), "training draws exactly what it would have drawn"
    assert torch.equal(as_augmented(digits, HandwritingShifts()), first), "the same picture every run"
    assert first.shape == (9, 28, 28) and not torch.allclose(first, digits.float() / 255)
    figure = digit_grid(torch.cat([digits, first]), ["label"] * 9 + ["as trained"] * 9, columns=9)
    assert len([ax for ax in figure.axes if ax.images]) == 18
