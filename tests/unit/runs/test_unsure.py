"""runs/unsure.py: the threshold under which answers are unsure, calibrated on the validation split."""

from pathlib import Path

import pytest
import torch

from mnistlit import LitClassifier, MNISTDataModule, Trainer
from mnistlit.runs import checkpoints
from mnistlit.runs.unsure import UnsureThreshold

QUIET = {"enable_model_summary": False, "enable_progress_bar": False, "deterministic": True}


@torch.inference_mode()
def right_answers_probabilities(model: LitClassifier, datamodule: MNISTDataModule) -> torch.Tensor:
    """The probability of every right answer on the validation split, computed here without the callback."""
    datamodule.setup("validate")
    model.eval()
    found = []
    for index, batch in enumerate(datamodule.val_dataloader()):
        images, labels = datamodule.on_after_batch_transfer(batch, index)
        probability, guess = model(images).softmax(1).max(1)
        found.append(probability[guess == labels])
    return torch.cat(found)


@pytest.mark.parametrize("share", [0.02, 0.25])
def test_each_checkpoint_carries_the_threshold_its_own_weights_calibrated(data, share: float) -> None:
    torch.manual_seed(0)
    Trainer(max_epochs=2, callbacks=[UnsureThreshold(share)], **QUIET).fit(LitClassifier(), data())
    (best,) = Path("lightning_logs/version_0/checkpoints").glob("best-*.ckpt")
    model = LitClassifier.load_from_checkpoint(best, weights_only=True)
    right = right_answers_probabilities(model, data())
    assert model.unsure_below == checkpoints.load(best)["unsure_below"]
    assert model.unsure_below == pytest.approx(float(torch.quantile(right, share)), abs=1e-6)
    flagged = (right < model.unsure_below).float().mean()
    assert flagged == pytest.approx(share, abs=2 / len(right))


def test_a_share_outside_zero_to_one_is_refused() -> None:
    for share in (0, 1, -0.1, 2):
        with pytest.raises(ValueError, match="flagged_share must lie between 0 and 1"):
            UnsureThreshold(share)


def test_a_module_without_a_threshold_loads_from_an_older_checkpoint(data) -> None:
    Trainer(max_epochs=1, **QUIET).fit(LitClassifier(), data())
    last = Path("lightning_logs/version_0/checkpoints/last.ckpt")
    checkpoint = checkpoints.load(last)
    assert isinstance(checkpoint["unsure_below"], float)
    del checkpoint["unsure_below"]  # as mnistlit 0.2 wrote them
    torch.save(checkpoint, last)
    assert LitClassifier.load_from_checkpoint(last, weights_only=True).unsure_below is None
