"""Lightning's Trainer, plus the subcommands a trained model needs after training.

LightningCLI runs ``mnistlit NAME`` as ``trainer.NAME(model=..., datamodule=..., **options)``;
a new subcommand is a method here, its name in ``MnistCLI.subcommands()``, and its own module.
"""

from pathlib import Path
from typing import Literal

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

    def export(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule,
        ckpt_path: str = "best",
        format: Literal["both", "onnx", "pt2"] = "both",
        output: str | None = None,
    ) -> None:
        """Write the network as ONNX (model.onnx) and torch.export (model.pt2), checked on the test set.

        Both take uint8 digits (batch, 28, 28) and return probabilities; each is loaded back and
        compared with the checkpoint on every test image before it gets its final name. ONNX
        needs the ``export`` extra (onnx, onnxscript, onnxruntime).

        Args:
            ckpt_path: ``best``, ``last`` (of the newest run) or a checkpoint file.
            format: ``onnx``, ``pt2`` or ``both``.
            output: the folder to write into; by default ``export/`` in the checkpoint's run folder.
        """
        from mnistlit import export

        checkpoint = checkpoints.load(ckpt_path)
        model.load_state_dict(checkpoint["state_dict"])
        about = summary(ckpt_path, checkpoint, model, datamodule)
        datamodule.prepare_data()
        datamodule.setup("test")
        written, report = export.export(
            model.net.cpu().float(),
            ["onnx", "pt2"] if format == "both" else [format],
            Path(output) if output else export.default_folder(ckpt_path),
            export.metadata(about, datamodule.class_names, ckpt_path),
            datamodule.test_set.images.cpu(),
            datamodule.test_set.labels.cpu(),
        )
        print(f"exported {ckpt_path} ({about['net']}):")
        for path in written:
            print(f"  {path} ({path.stat().st_size / 1e6:.1f} MB)")
        print(report)
