"""Lightning's Trainer, plus the subcommands a trained model needs after training.

LightningCLI runs ``mnistlit NAME`` as ``trainer.NAME(model=..., datamodule=..., **options)``;
a new subcommand is a method here, its name in ``MnistCLI.subcommands()``, and its own module.
"""

import lightning as L

from mnistlit import checkpoints
from mnistlit.describe import describe, summary
from mnistlit.images import MAX_IMAGE_PIXELS
from mnistlit.serve import MAX_UPLOAD_BYTES


class MnistTrainer(L.Trainer):
    def describe(
        self, model: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: str = "best"
    ) -> None:
        """Print what a checkpoint holds: network, dataset, epoch and step, best validation accuracy.

        Args:
            ckpt_path: ``best``, ``last`` (of the newest run) or a checkpoint file.
        """
        print(describe(summary(ckpt_path, checkpoints.load(ckpt_path), model, datamodule)))

    def serve(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule,
        ckpt_path: str = "best",
        host: str = "127.0.0.1",
        port: int = 8000,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        """Serve the model over HTTP until Ctrl-C or SIGTERM: ``POST /predict``, ``POST /predict/batch``,
        ``GET /health``, and FastAPI's ``/docs``. Needs the ``serve`` extra (FastAPI, uvicorn).

        Args:
            ckpt_path: ``best``, ``last`` (of the newest run) or a checkpoint file.
            host: the address to listen on; 127.0.0.1 keeps it on this machine.
            port: the port; 0 picks a free one (printed).
            max_upload_bytes: larger requests are refused with 413.
            max_image_pixels: images with more pixels are refused (422) before they are decoded.
        """
        from mnistlit import serve

        checkpoint = checkpoints.load(ckpt_path)
        model.load_state_dict(checkpoint["state_dict"])
        classifier = serve.Classifier(
            model, datamodule.class_names, summary(ckpt_path, checkpoint, model, datamodule), max_image_pixels
        )
        serve.run(serve.create_app(classifier, max_upload_bytes), host, port)
