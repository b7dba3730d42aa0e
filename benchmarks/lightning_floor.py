"""What Lightning's training loop alone costs per step, before anything of mnistlit's.

The seed Net at batch 128 on the same in-memory batches, in one process, three ways: a plain
loop (autocast, forward, loss, zero_grad, backward, Adam step), ``Trainer(barebones=True)`` with
a LightningModule that only returns the loss, and a default Trainer with the logger,
checkpointing, progress bar and model summary switched off. Each is timed from the start of
one batch to the start of the next; medians of the steps after the first 20, alternating in
each round. Prints a Markdown table per precision. mnistlit adds its metrics, checkpoints and
logging on top of the Trainer (make bench measures the whole).
"""

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time

import lightning as L
import measured
import torch
import torch.nn.functional as F
from run import KEEP_FREED_MEMORY, cpu_name

from mnistlit.core.nets import Net
from mnistlit.runs.precision import cpu_bf16_instructions
from mnistlit.runs.process import quiet_known_noise

BATCH = 128


class Batches:
    """The same few random batches over and over: the data path is not what is measured."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        images = torch.randn(8, BATCH, 1, 28, 28)
        self.images = [batch.contiguous(memory_format=torch.channels_last) for batch in images]
        self.labels = [torch.randint(0, 10, (BATCH,)) for _ in range(8)]

    def __iter__(self):
        return ((self.images[i % 8], self.labels[i % 8]) for i in range(self.steps))

    def __len__(self) -> int:
        return self.steps


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = Net().to(memory_format=torch.channels_last)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self.net(images), labels)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class BatchClock(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.starts.append(time.perf_counter())


def step_ms(starts: list[float]) -> float:
    steps = [end - start for start, end in zip(starts, starts[1:], strict=False)]
    return 1000 * statistics.median(steps[20:])


def plain(batches: Batches, precision: str) -> float:
    net = Net().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    autocast = (
        functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else contextlib.nullcontext
    )
    starts = []
    for images, labels in batches:
        starts.append(time.perf_counter())
        with autocast():
            loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step_ms(starts)


def lightning(batches: Batches, precision: str, barebones: bool) -> float:
    clock = BatchClock()
    switched_off = ("logger", "enable_checkpointing", "enable_progress_bar", "enable_model_summary")
    features = {} if barebones else dict.fromkeys(switched_off, False)
    trainer = L.Trainer(
        max_epochs=1, precision=precision, accelerator="cpu", devices=1, barebones=barebones,
        callbacks=[clock], **features,
    )  # fmt: skip
    trainer.fit(Classifier(), train_dataloaders=batches)
    return step_ms(clock.starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="FOLDER", help="also write the table as JSON there (make docs)")
    args = parser.parse_args()
    if any(os.environ.get(name) != value for name, value in KEEP_FREED_MEMORY.items()):
        # Restart with glibc's malloc told to keep freed memory, as make bench runs everything.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP_FREED_MEMORY})
    quiet_known_noise()
    torch.manual_seed(0)
    batches = Batches(args.steps)
    threads = torch.get_num_threads()
    print(f"ms per training step, seed Net, batch {BATCH}; {cpu_name()}, {threads} torch threads\n")
    print(
        "| precision | plain loop | barebones Trainer | default Trainer | barebones/plain | default/plain |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    # bf16 where the CPU computes it natively; elsewhere mnistlit trains in fp32 (runs/precision.py).
    precisions = ["32-true"] + (["bf16-mixed"] if cpu_bf16_instructions() else [])
    rows = []
    for precision in precisions:
        rounds = [
            (
                plain(batches, precision),
                lightning(batches, precision, True),
                lightning(batches, precision, False),
            )
            for _ in range(args.rounds)
        ]
        bare, barebones, default = (statistics.median(column) for column in zip(*rounds, strict=True))
        print(f"| {precision} | {bare:.2f} | {barebones:.2f} | {default:.2f} "
              f"| {barebones / bare:.3f}× | {default / bare:.3f}× |")  # fmt: skip
        rows.append([precision, round(bare, 2), round(barebones, 2), round(default, 2),
                     round(barebones / bare, 3), round(default / bare, 3)])  # fmt: skip
    if args.json:
        columns = ["precision", "plain loop ms", "barebones Trainer ms", "default Trainer ms",
                   "barebones / plain", "default / plain"]  # fmt: skip
        note = (f"Medians of steps 21–{args.steps} over {args.rounds} alternating rounds, seed Net, "
                f"batch {BATCH}, {threads} torch threads.")  # fmt: skip
        command = f"python benchmarks/lightning_floor.py --steps {args.steps} --rounds {args.rounds}"
        print(f"\nwritten: {measured.write(args.json, 'lightning_floor', command, columns, rows, note)}")


if __name__ == "__main__":
    main()
