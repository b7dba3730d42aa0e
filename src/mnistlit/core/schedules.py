"""Learning-rate schedules whose length follows the run: epochs, step limits, accumulation, resume.

A one-cycle schedule must know how many optimizer steps the run takes. Lightning's
``trainer.estimated_stepping_batches`` knows, but asking it rebuilds the trainer's training
loader and so drops the position a resumed run restored into it (Lightning #20550); the
count here is taken from a fresh loader of the datamodule instead, with the trainer's limits.
"""

import functools
import math
import warnings
from collections.abc import Callable

import lightning as L
import torch

from mnistlit.core.errors import MnistlitError, one_line


def batches_per_epoch(trainer: L.Trainer) -> int | None:
    """Training batches in one epoch of this process, after ``limit_train_batches``; None if unknown."""
    datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's connectors at run time
    if datamodule is None:
        return None
    batches = len(datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        return min(batches, limit)
    return int(batches * limit) if limit is not None else batches


def run_length(trainer: L.Trainer, interval: str) -> int | None:
    """How often this run steps its scheduler: epochs (``interval="epoch"``) or optimizer steps;
    None if the run is unbounded."""
    epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    if interval == "epoch":
        return epochs
    batches = batches_per_epoch(trainer)
    limits = [trainer.max_steps] if trainer.max_steps > 0 else []
    if epochs is not None and batches is not None:
        limits.append(epochs * math.ceil(batches / trainer.accumulate_grad_batches))
    return min(limits) if limits else None


def build(
    make_scheduler: Callable,
    optimizer: torch.optim.Optimizer,
    make_optimizer: Callable,
    length: int | None,
):
    """The configured scheduler for ``optimizer``, as long as the run when its config gives no length.

    It is first stepped through the whole run on a throwaway optimizer, so that a schedule that
    cannot last the run (``T_max: 0``, too few one-cycle steps) is one line now instead of a
    traceback hours in.
    """
    keywords = getattr(make_scheduler, "keywords", {})
    if "total_steps" in keywords and keywords["total_steps"] is None and keywords.get("epochs") is None:
        if length is None:
            raise MnistlitError(
                "model.lr_scheduler needs a length: set trainer.max_epochs or trainer.max_steps, "
                "or the scheduler's total_steps"
            )
        make_scheduler = functools.partial(make_scheduler, total_steps=max(1, length))
    name = "the scheduler"
    step = 0
    try:
        rehearsed = make_scheduler(make_optimizer([torch.zeros(1, requires_grad=True)]))
        name = type(rehearsed).__name__
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            while step < (length or 0):
                step += 1
                rehearsed.step()
        return make_scheduler(optimizer)
    except (ValueError, TypeError, ArithmeticError) as e:
        at = f" at step {step} of {length}" if step else ""
        raise MnistlitError(f"model.lr_scheduler: {name} fails{at}: {one_line(e)}") from e


def check_resumed(trainer: L.Trainer, interval: str) -> None:
    """A resumed run gets its scheduler back from the checkpoint, with the length it had then:
    refuse to run past its end."""
    steps = run_length(trainer, interval)
    for config in trainer.lr_scheduler_configs:
        total = getattr(config.scheduler, "total_steps", None)
        if total is not None and steps is not None and total < steps:
            raise MnistlitError(
                f"the checkpoint's {type(config.scheduler).__name__} lasts {total} steps but this run "
                f"needs {steps}: resume with the max_epochs it was started with, or start a new run"
            )
