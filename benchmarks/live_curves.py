"""What the live learning curves cost in a notebook: the same fit in a real Jupyter kernel with
mnistlit.Trainer's live_curves on and off, alternating, on the real MNIST.

Curves are redrawn when an epoch starts (and when training ends), so their cost lands in the
``seconds`` of history.csv's second epoch; no step pays for them. Also times one redraw alone.

    python benchmarks/live_curves.py --rounds 3 --json docs/measurements     (make bench-notebook)
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import nbformat
from measured import write
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]

FIT = """
import json, time, functools, torch, lightning as L
from mnistlit import LitClassifier, MNISTDataModule, Net, Trainer
seconds = {}
for round_ in range(ROUNDS):
    for live in (True, False) if round_ % 2 == 0 else (False, True):
        L.seed_everything(round_)
        model = LitClassifier(net=Net(), optimizer=functools.partial(torch.optim.Adam, lr=0.01))
        trainer = Trainer(max_epochs=2, live_curves=live, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=f"runs_{live}")
        trainer.fit(model, MNISTDataModule(data_dir=DATA))
        seconds.setdefault(live, []).append(float(trainer.history["seconds"][1]))
from mnistlit.runs.history import LiveCurves
curves = LiveCurves()
draws = []
for _ in range(20):
    start = time.perf_counter()
    curves._draw(trainer)
    draws.append(time.perf_counter() - start)
print(json.dumps({"seconds": {str(k): v for k, v in seconds.items()}, "draws": draws}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--json", type=Path, help="write the table into this folder (docs/measurements)")
    args = parser.parse_args()
    source = FIT.replace("ROUNDS", str(args.rounds)).replace("DATA", repr(args.data_dir))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    with tempfile.TemporaryDirectory() as folder:
        NotebookClient(
            notebook, timeout=3600, kernel_name="python3", resources={"metadata": {"path": folder}}
        ).execute()
    printed = "".join(o.get("text", "") for o in notebook.cells[0].outputs if o.output_type == "stream")
    result = json.loads(printed.strip().splitlines()[-1])
    on, off = result["seconds"]["True"], result["seconds"]["False"]
    paired = [a - b for a, b in zip(on, off, strict=True)]
    draw = statistics.median(result["draws"])
    rows = [
        ["live curves on", round(statistics.median(on), 2), ", ".join(f"{s:.2f}" for s in on)],
        ["live curves off", round(statistics.median(off), 2), ", ".join(f"{s:.2f}" for s in off)],
        ["on - off, same round", round(statistics.median(paired), 2), ", ".join(f"{s:+.2f}" for s in paired)],
        ["one redraw alone (median of 20)", round(draw, 3), ""],
    ]
    columns = ["in a Jupyter kernel, seed Net, batch 128, fp32", "epoch 2, median s", "each round, s"]
    for row in rows:
        print(row)
    if args.json:
        note = (
            f"{args.rounds} rounds, the order alternating; epoch 2 of a 2-epoch fit holds one redraw "
            f"({draw:.2f} s alone), which is the whole cost: no step pays for it. Where the epochs "
            "vary by more than that between rounds, the on - off row is that noise."
        )
        print(write(args.json, "live_curves", "make bench-notebook", columns, rows, note))


if __name__ == "__main__":
    main()
