"""examples/quickstart.ipynb, run top to bottom in a real Jupyter kernel on the synthetic digits."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.helpers import ROOT

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def outputs(cell) -> list[dict]:
    return [output for output in cell.outputs if output.output_type in ("display_data", "execute_result")]


def test_the_quickstart_notebook_runs_and_shows_the_curves_while_training(tiny_data, tmp_path: Path) -> None:
    data_dir, md5 = tiny_data
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [
        i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])
    ]
    # papermill's convention: the test's values in a cell right after the tagged one
    notebook.cells.insert(
        parameters + 1,
        nbformat.v4.new_code_cell(
            "from mnistlit.core.datasets import IDXDataset\n"
            f"data_settings = {{'data_dir': {str(data_dir)!r}, 'batch_size': 32, 'val_size': 100,\n"
            f"    'dataset': IDXDataset(md5={md5!r}, mirrors=[])}}\n"
            "max_epochs = 2"
        ),
    )
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()

    code = {cell.source.splitlines()[0]: cell for cell in notebook.cells if cell.cell_type == "code"}
    digits = outputs(code["import lightning as L"])
    assert any("image/png" in output.data for output in digits), "nine training digits drawn"
    trained = outputs(code["import functools"])
    assert [o for o in trained if "image/png" in o.data and o.output_type == "display_data"], (
        "the learning curves shown below the training cell while it ran"
    )
    (table,) = outputs(code["dfhistory = trainer.history"])
    assert "text/html" in table.data and table.data["text/plain"].count("\n") == 2, "a header and 2 epochs"
    (curves,) = outputs(code["figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 3.5))"])
    assert "image/png" in curves.data
    classified = code["from PIL import Image, ImageDraw"]
    assert any("read as " in output.get("text", "") for output in classified.outputs)
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "history.csv").read_text().count("\n") == 3 and (
        run / "checkpoints" / "last.ckpt"
    ).is_file()
    assert (run / "confusion_matrix.png").is_file(), "the test wrote beside the fit, as in Lightning"
