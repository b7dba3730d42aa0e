"""Run folders: one ``version_N`` per run, what ``best`` and ``last`` mean, one writer at a time,
where a callback writes."""

import fcntl
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import IO

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mnistlit.core.errors import MnistlitError
from mnistlit.files import atomic_write
from mnistlit.runs.checkpoints import CHECKPOINT_ALIASES, load


def runs_folder(trainer: Namespace) -> Path:
    """The folder that holds this config's ``version_N`` run folders: the root of its first
    TensorBoard or CSV logger, as ``mnistlit.Trainer.runs_dir`` will say once it is built."""
    root = Path(trainer.get("default_root_dir") or ".")
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
            module, _, name = logger.class_path.rpartition(".")
            if issubclass(getattr(importlib.import_module(module), name), TensorBoardLogger | CSVLogger):
                init = logger.init_args
                return Path(init.get("save_dir") or root) / (init.get("name") or "lightning_logs")
    return root / "lightning_logs"


# In a run folder made under SLURM: the job that made it (slurm_job()).
JOB_FILE = "slurm_job"


def slurm_job() -> str | None:
    """This process's SLURM job as a requeue keeps it: ``<array job>_<task>`` for an array task,
    else the job id; None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def job_of(run: Path) -> str | None:
    """The SLURM job that made a run folder, if one did."""
    try:
        return (run / JOB_FILE).read_text().strip() or None
    except OSError:
        return None


def resolve(ckpt_path: str, runs: Path, fresh_start: bool = False) -> Path | None:
    """Turn ``best``/``last`` into a checkpoint file of the newest training run; check other paths exist.

    Lightning resolves these aliases only inside the run that wrote them, and every new
    process starts a new ``version_N`` folder, so a later ``test --ckpt_path best`` needs this.
    ``best`` is the newest run's best checkpoint (or an older run's, if newer ones have none
    yet); ``last`` is the newest training run's ``last.ckpt`` and nothing else: resuming
    another run than the one a user just stopped would continue the wrong experiment.

    Under SLURM only the runs this job made count, so a requeued job (or array task) resumes
    its own run, never another job's that shares ``lightning_logs/``. With ``fresh_start`` (a
    fit), ``last`` before this job has any run is None: the job's first start begins the run
    its requeues will resume, from the same command.
    """
    if ckpt_path not in CHECKPOINT_ALIASES:
        path = Path(ckpt_path)
        if not path.exists():
            raise MnistlitError(f"--ckpt_path {ckpt_path}: no such file")
        return path
    training_runs = sorted(
        (folder.parent for folder in runs.glob("version_*/checkpoints") if folder.is_dir()),
        key=version_of,
        reverse=True,
    )
    job = slurm_job()
    if job is not None:
        training_runs = [run for run in training_runs if job_of(run) == job]
        if ckpt_path == "last" and fresh_start and not training_runs:
            print(f"mnistlit: SLURM job {job} has no run under {runs}/ yet: starting one", file=sys.stderr)
            return None
    if ckpt_path == "last" and training_runs:
        newest = training_runs[0] / "checkpoints" / "last.ckpt"
        if newest.is_file():
            return newest
        others = [str(run) for run in training_runs if (run / "checkpoints" / "last.ckpt").is_file()]
        raise MnistlitError(
            f"--ckpt_path last: the newest training run, {training_runs[0]}, has no last.ckpt; "
            + (
                f"runs that have one: {', '.join(others)} (pass its file to --ckpt_path)"
                if others
                else "no other run has one either"
            )
        )
    for run in training_runs:
        found = best_in(run / "checkpoints")
        if found is not None:
            return found
        gone = recorded_best(run / "checkpoints")
        if gone is not None:  # not an older run's best instead: the user meant this run
            raise MnistlitError(
                f"--ckpt_path best: {gone}, the best checkpoint of the newest run with one, no longer "
                "exists; pass another checkpoint file to --ckpt_path"
            )
    of_job = f"of SLURM job {job} " if job is not None else ""
    raise MnistlitError(
        f"--ckpt_path {ckpt_path}: no run {of_job}under {runs}/ has a {ckpt_path} checkpoint yet "
        "(train first: python -m mnistlit fit --config ...)"
    )


def is_newest_state_of_a_run(path: Path, runs: Path) -> bool:
    """Whether ``path`` is ``runs/version_N/checkpoints/last.ckpt``: the state a run would continue from.

    Any other file (a best checkpoint, a copy, another folder's) is an earlier state or a
    stranger; continuing it inside its run would overwrite what that run saved later.
    """
    run = path.parent.parent
    return (
        path.name == "last.ckpt"
        and path.parent.name == "checkpoints"
        and version_of(run) >= 0
        and run.parent.resolve() == runs.resolve()
    )


def recorded_best(folder: Path) -> Path | None:
    """The best checkpoint ModelCheckpoint recorded in ``folder/last.ckpt``, whether or not it
    still exists."""
    last = folder / "last.ckpt"
    if last.is_file():
        # By role, not by name: the callback state that recorded a best path (last.ckpt's own
        # writer monitors nothing, so it never records one).
        for state in load(last).get("callbacks", {}).values():
            recorded = isinstance(state, dict) and state.get("best_model_path")
            if recorded:
                return folder / Path(recorded).name
    return None


def best_in(folder: Path) -> Path | None:
    """The best checkpoint ModelCheckpoint recorded in ``last.ckpt``, else the only ``best*.ckpt``."""
    recorded = recorded_best(folder)
    if recorded is not None and recorded.is_file():
        return recorded
    candidates = list(folder.glob("best*.ckpt"))
    return candidates[0] if len(candidates) == 1 else None


def version_of(run: Path) -> int:
    """N for a ``version_N`` folder, -1 for anything else."""
    suffix = run.name.removeprefix("version_")
    return int(suffix) if suffix.isdigit() else -1


def reserve_run_folder(runs: Path) -> int:
    """Create the next free ``version_N`` folder and return N.

    ``mkdir`` either creates the folder or fails, so two runs started at the same moment
    never get the same folder (TensorBoardLogger only lists the folders and picks the next).
    """
    runs.mkdir(parents=True, exist_ok=True)
    version = max((version_of(p) for p in runs.iterdir()), default=-1) + 1
    while True:
        try:
            (runs / f"version_{version}").mkdir()
        except FileExistsError:
            version += 1
            continue
        if (job := slurm_job()) is not None:
            atomic_write(runs / f"version_{version}" / JOB_FILE, f"{job}\n".encode())
        return version


def lock_run(run: Path) -> IO[str]:
    """Make this process the only writer of the run folder ``run``, until it closes the returned
    file or exits.

    ``flock`` is released by the kernel when the process dies, even by SIGKILL, so a lock
    is never left behind; a second writer is refused with the holder's PID.
    """
    path = run / ".lock"
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    except OSError as e:
        raise MnistlitError(f"cannot lock run folder {run}: {e.strerror or e}") from e
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise MnistlitError(
            f"run folder {run} is in use by another mnistlit process (PID {holder}); "
            "wait for it to end or stop it first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def discard_if_unused(run: Path) -> None:
    """Remove a run folder that holds no checkpoint and no predictions: a run that failed before
    saving anything leaves nothing to crowd TensorBoard and the ``best``/``last`` lookup."""
    if run.is_dir() and not any(run.rglob("*.ckpt")) and not (run / "predictions.csv").exists():
        shutil.rmtree(run, ignore_errors=True)


def run_folder(trainer: L.Trainer) -> Path | None:
    """The run's folder where files are written: on global rank 0, None on the other ranks.

    Every rank must call it: under DDP ``trainer.log_dir`` is a broadcast from rank 0, and a
    collective asked on rank 0 alone hangs the run.
    """
    log_dir = trainer.log_dir
    return Path(log_dir or trainer.default_root_dir) if trainer.is_global_zero else None
