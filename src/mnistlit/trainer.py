"""Lightning's Trainer, plus the subcommands a trained model needs after training.

LightningCLI runs ``mnistlit NAME`` as ``trainer.NAME(model=..., datamodule=..., **options)``;
a new subcommand is a method here, its name in ``MnistCLI.subcommands()``, and its own module.
"""

import lightning as L

from mnistlit.describe import describe


class MnistTrainer(L.Trainer):
    def describe(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str = "best",
    ) -> None:
        """Print what a checkpoint holds: network, dataset, epoch and step, best validation accuracy.

        Args:
            ckpt_path: ``best``, ``last`` (of the newest run) or a checkpoint file.
        """
        print(describe(ckpt_path, model, datamodule))
