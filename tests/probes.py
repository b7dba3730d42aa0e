"""Test-only callbacks, added to a real CLI run with ``--trainer.callbacks+ tests.probes.NAME``, and
test-only networks (``--model.net tests.probes.NAME``)."""

import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from mnistlit.core.nets import Net


class SlowValidation(L.Callback):
    """Marks ``validating`` in the working folder and slows validation down (not the sanity check),
    so that a test can send a signal while a fit is validating."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            Path("validating").write_text(str(trainer.global_step))
            time.sleep(0.2)


class SlowSteps(L.Callback):
    """Slows every training step down (50 ms), so that a test can catch a fit mid-way."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        time.sleep(0.05)


class PoisonAtStep12(L.Callback):
    """Makes the network's weights NaN before step 12, as a diverging run would."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 12:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(float("nan"))


class SlowTest(L.Callback):
    """Marks ``testing`` in the working folder and slows ``test`` down, for a signal to arrive in it."""

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        Path("testing").write_text(str(batch_idx))
        time.sleep(0.2)


class KthValueNet(Net):
    """The seed Net with its logits centred on their 5th smallest value: trains and runs in PyTorch,
    but ONNX has no function for ``aten.kthvalue``."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = super().forward(images)
        return logits - logits.kthvalue(5, dim=1, keepdim=True).values


class AlwaysDropoutNet(Net):
    """A common mistake: dropout called with ``training=True``, so it stays on in eval mode and
    every run of the network, exported or not, gives other answers."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.dropout(super().forward(images), 0.5, training=True)
