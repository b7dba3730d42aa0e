"""A study's trials, run by as many ``mnistlit search`` processes as share its storage.

A study is made with exactly as many trials as asked, queued (Optuna's WAITING state); a worker
claims one with the storage's compare-and-set (WAITING -> RUNNING, as ``Study.ask`` pops a queued
trial), runs it as a ``fit`` in its own process and tells the study how it ended. So the count is
exact whatever the number of workers: ``Study.optimize(n_trials=...)`` counts per process, and its
``MaxTrialsCallback`` lets parallel workers start more than asked.

A worker records a heartbeat while its trial runs. When a worker dies (SIGKILL, a lost machine),
the next worker to look fails its trial as stale and Optuna's RetryHeartbeatStaleTrialCallback
queues it again with the same values; the retry continues the run from its ``last.ckpt``.
"""

import contextlib
import ctypes
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError

from mnistlit.core.errors import MnistlitError

HEARTBEAT_SECONDS = 5
# A running trial not heard from for this long is failed and queued again: four missed heartbeats,
# so a worker slowed down by a busy machine is not taken for dead.
GRACE_SECONDS = 20

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search says what happens in its own lines


class SearchStopped(BaseException):
    """Ctrl-C or SIGTERM reached the search (its name is the message)."""


def retry_stale() -> RetryHeartbeatStaleTrialCallback:
    # The retry keeps the intermediate values its epochs already reported: the pruner sees them.
    return RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)


def open_storage(url: str) -> RDBStorage:
    for attempt in range(5):
        try:
            return RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=retry_stale(),
            )
        except Exception as e:  # SQLAlchemy's errors: a bad URL, a refused connection, a missing driver
            # Workers starting at once on a new database race to create its tables (alembic's
            # version table first); the loser finds them made when it tries again.
            racing = isinstance(e, IntegrityError) or "already exists" in str(e)
            if not racing or attempt == 4:
                raise MnistlitError(f"cannot open the study storage {redacted(url)}: {first_line(e)}") from e
            time.sleep(0.5)
    raise AssertionError("unreachable")


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}{sep}{user}{colon and ':***'}@{host}"


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def open_study(
    storage: RDBStorage, name: str, direction: Literal["maximize", "minimize"], trials: int
) -> optuna.Study:
    """Create the study with its ``trials`` queued, or join it (another worker may be creating it)."""
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
    else:
        for _ in range(trials):
            study.enqueue_trial({})
        study.set_user_attr("trials", trials)  # last: a worker that joins waits for it
    deadline = time.monotonic() + 60
    while "trials" not in study.user_attrs:
        if time.monotonic() > deadline:
            raise MnistlitError(f"study {name} exists but its trials were never queued: name another --study")
        time.sleep(0.5)
    if study.direction.name.lower() != direction:
        raise MnistlitError(
            f"study {name} was made to {study.direction.name.lower()}, this config to {direction}"
        )
    asked = study.user_attrs["trials"]
    if trials < asked:
        raise MnistlitError(f"study {name} was asked for {asked} trials; --trials can grow it, not shrink it")
    if trials > asked:  # grown by one worker at a time: two at once would both queue the difference
        for _ in range(trials - asked):
            study.enqueue_trial({})
        study.set_user_attr("trials", trials)
    return study


@dataclass
class Claimed:
    trial_id: int
    number: int
    retries: int | None  # the number of the trial this one continues, if it is a retry


def claim(study: optuna.Study, storage: RDBStorage) -> Claimed | None:
    """Take a queued trial, or None when there is none left."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for queued in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, queued.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return Claimed(
                    trial_id, queued.number, RetryHeartbeatStaleTrialCallback.retried_trial_number(queued)
                )
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def die_with_parent() -> None:
    """In the trial's process before it starts: SIGTERM when the search dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG), so the fit saves last.ckpt instead of running on, orphaned."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


@dataclass
class Outcome:
    returncode: int
    last_line: str


def run_fit(command: list[str], env: dict[str, str], label: str, heartbeat: Callable[[], None]) -> Outcome:
    """Run one trial's fit, its output prefixed with ``label``; beat while it runs. Ctrl-C or
    SIGTERM to the search stops the fit as a stop of its own would (last.ckpt saved), then raises."""
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # Ctrl-C reaches the search alone, which passes on one SIGTERM
        preexec_fn=die_with_parent,
    )
    lines: list[str] = []

    def relay() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            print(f"{label} | {line}", end="", flush=True)
            if line.strip():
                lines[:] = [line.strip()]

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        while process.poll() is None:
            heartbeat()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(HEARTBEAT_SECONDS)
    except (KeyboardInterrupt, SearchStopped):
        process.send_signal(signal.SIGTERM)
        process.wait()
        reader.join()
        raise
    reader.join()
    return Outcome(process.returncode, lines[0] if lines else "")
