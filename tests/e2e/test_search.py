"""``mnistlit search``: real trials, each a ``fit`` in its own process, in a real Optuna storage."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from tests.cli.test_trackers import free_port
from tests.helpers import (
    CLI_ENV,
    CONFIGS,
    PYTHON,
    ROOT,
    as_in_a_terminal,
    run_cli,
    tiny_config,
    write_synthetic_mnist,
)

ENDED = (TrialState.COMPLETE, TrialState.PRUNED)


# speedrun.yaml on the tiny synthetic MNIST, each step slowed down so that a test can stop a trial mid-way.
SLOW_SPEEDRUN = ("--config", str(ROOT / "configs" / "speedrun.yaml"), "--config", "tiny.yaml")
SLOW_SPEEDRUN += ("--trainer.callbacks+", "tests.probes.SlowSteps")


def search_command(*args: str, configs: tuple[str, ...] = CONFIGS) -> list[str]:
    return [PYTHON, "-m", "mnistlit", "search", *configs, "--search", "space.yaml", *args]


def write_space(workdir: Path, space: dict) -> None:
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))


def trials_of(workdir: Path, storage: str | None = None, study: str = "space") -> list[FrozenTrial]:
    url = storage or f"sqlite:///{workdir / 'lightning_logs' / 'optuna.db'}"
    return optuna.load_study(study_name=study, storage=url).get_trials()


def trials_so_far(workdir: Path) -> list[FrozenTrial]:
    """The study's trials while a search may still be creating it (none until it exists)."""
    if not (workdir / "lightning_logs" / "optuna.db").exists():
        return []
    try:
        return trials_of(workdir)
    except (KeyError, SQLAlchemyError):  # no such study yet, or its tables are being made
        return []


def history_rows(run_dir: str) -> list[dict[str, str]]:
    lines = (Path(run_dir) / "history.csv").read_text().splitlines()
    return [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]


def searched(workdir: Path, *args: str, configs: tuple[str, ...] = CONFIGS) -> subprocess.CompletedProcess:
    """``mnistlit search ARGS`` run to its end in ``workdir``; it succeeded."""
    result = subprocess.run(
        search_command(*args, configs=configs),
        cwd=workdir,
        env=CLI_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def assert_the_best_config_refits_to(workdir: Path, value: float) -> None:
    """A fit of the search's best.yaml reaches its trial's val_acc, to 4 digits."""
    best = workdir / "lightning_logs" / "search" / "space" / "best.yaml"
    refit = run_cli(workdir, "fit", "--config", str(best))
    assert refit.returncode == 0, refit.stderr[-3000:]
    refit_run = sorted((workdir / "lightning_logs").glob("version_*"), key=lambda p: int(p.name[8:]))[-1]
    refit_best = max(float(row["val_acc"]) for row in history_rows(str(refit_run)))
    assert f"{refit_best:.4f}" == f"{value:.4f}", "the best config trains to its trial's val_acc"


def trial_processes(workdir: Path) -> list[int]:
    """The trials' fit processes running in ``workdir``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"OptunaPruning" in command and cwd == str(workdir):
            found.append(int(pid))
    return found


def wait_until(condition, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_search_killed_mid_trial_goes_on_to_exactly_its_trials_and_its_best_config_refits_alike(
    tmp_path: Path,
) -> None:
    md5 = write_synthetic_mnist(tmp_path / "data" / "mnist")
    tiny_config(tmp_path, md5)
    space = {
        "model.lr_scheduler.init_args.max_lr": {"log_uniform": [1e-3, 3e-2]},
        "data.batch_size": {"choice": [32, 64]},
    }
    write_space(tmp_path, {**space, "pruner": {"class_path": "optuna.pruners.NopPruner"}})
    command = search_command("--trials", "6", configs=SLOW_SPEEDRUN)
    first = subprocess.Popen(
        command, cwd=tmp_path, env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def trial_2_is_mid_way() -> bool:
        trials = trials_so_far(tmp_path)
        return (
            len(trials) > 2
            and trials[2].state == TrialState.RUNNING
            and len(trials[2].intermediate_values) == 1
        )

    wait_until(trial_2_is_mid_way, first)
    first.kill()
    first.communicate()
    deadline = time.monotonic() + 60
    while trial_processes(tmp_path):  # the fit heard its search die (SIGTERM), and saves last.ckpt
        assert time.monotonic() < deadline, "the orphaned fit did not stop"
        time.sleep(0.2)
    killed = trials_of(tmp_path)[2]
    last = Path(killed.user_attrs["run_dir"]) / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= 1, "saved after epoch 0"

    again = searched(tmp_path, "--trials", "6", configs=SLOW_SPEEDRUN)
    trials = trials_of(tmp_path)
    ended = [t for t in trials if t.state in ENDED]
    assert len(ended) == 6, [(t.number, t.state) for t in trials]
    assert [t.number for t in trials] == list(range(len(trials))), "no trial number twice"
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.number == 2
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 2]
    assert retry.state == TrialState.COMPLETE and retry.params == failed.params
    assert retry.user_attrs["run_dir"] == failed.user_attrs["run_dir"], "it went on in its own run folder"
    assert [row["epoch"] for row in history_rows(retry.user_attrs["run_dir"])] == ["0", "1"]
    assert "it goes on from" in again.stdout
    run_dirs = {t.user_attrs["run_dir"] for t in ended}
    assert len(run_dirs) == 6 and len(list((tmp_path / "lightning_logs").glob("version_*"))) == 6

    for trial in ended:
        assert f"\n{trial.number}  " in again.stdout, "the table lists every trial"
    out = tmp_path / "lightning_logs" / "search" / "space"
    for picture in ("optimization_history.png", "param_importances.png"):
        assert (out / picture).read_bytes().startswith(b"\x89PNG"), picture
    best = max(ended, key=lambda t: t.value)
    assert_the_best_config_refits_to(tmp_path, best.value)


@pytest.mark.slow
def test_ctrl_c_stops_the_search_and_its_trial_which_the_same_command_continues(tmp_path: Path) -> None:
    md5 = write_synthetic_mnist(tmp_path / "data" / "mnist")
    tiny_config(tmp_path, md5)
    write_space(tmp_path, {"model.lr_scheduler.init_args.max_lr": {"log_uniform": [1e-3, 3e-2]}})
    command = search_command("--trials", "1", configs=SLOW_SPEEDRUN)
    first = subprocess.Popen(
        command, cwd=tmp_path, env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=as_in_a_terminal,
    )  # fmt: skip

    def trial_0_is_mid_way() -> bool:
        trials = trials_so_far(tmp_path)
        return bool(trials) and len(trials[0].intermediate_values) == 1

    wait_until(trial_0_is_mid_way, first)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 1 and err.strip().splitlines()[-1] == (
        "mnistlit: search stopped by Ctrl-C; the same command goes on with the study"
    ), err[-3000:]
    assert "stopped by SIGTERM at step" in out, "the fit heard it too and saved last.ckpt"
    assert not trial_processes(tmp_path)
    stopped, queued = trials_of(tmp_path)
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["stopped"] == "stopped by Ctrl-C"
    assert queued.state == TrialState.WAITING and queued.params == stopped.params, "queued again at once"

    searched(tmp_path, "--trials", "1", configs=SLOW_SPEEDRUN)
    stopped, continued = trials_of(tmp_path)
    assert (
        continued.state == TrialState.COMPLETE
        and continued.user_attrs["run_dir"] == stopped.user_attrs["run_dir"]
    )
    assert [row["epoch"] for row in history_rows(continued.user_attrs["run_dir"])] == ["0", "1"]


@pytest.mark.slow
def test_each_trial_ends_as_its_values_deserve_and_the_study_goes_on_to_its_trials(tmp_path: Path) -> None:
    """A hopeless learning rate is pruned after its first epoch, through Lightning; a bad sample
    (max_epochs 0) fails its trial with the fit's one line and another trial takes its place."""
    md5 = write_synthetic_mnist(tmp_path / "data" / "mnist")
    tiny_config(tmp_path, md5)
    pruner = {"class_path": "optuna.pruners.ThresholdPruner", "init_args": {"lower": 0.3}}
    space = {
        "model.optimizer.init_args.lr": {"log_uniform": [1e-7, 1e-2]},
        "trainer.max_epochs": {"int": [0, 3]},
    }
    write_space(tmp_path, {**space, "pruner": pruner})
    result = searched(tmp_path, "--trials", "5")
    trials = trials_of(tmp_path)
    assert sum(t.state in ENDED for t in trials) == 5
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    for trial in trials:
        if trial.params["trainer.max_epochs"] == 0:
            assert trial.state == TrialState.FAIL and "run_dir" not in trial.user_attrs
            assert "trainer.max_epochs must be at least 1" in trial.user_attrs["failed"]
            continue
        rows = history_rows(trial.user_attrs["run_dir"])
        first_val_acc = float(rows[0]["val_acc"])
        if trial.state == TrialState.PRUNED:
            assert first_val_acc < 0.3 and len(rows) == 1, "stopped after the epoch it was pruned at"
            assert trial.params["trainer.max_epochs"] > 1, "pruned only where stopping saves epochs"
            last = Path(trial.user_attrs["run_dir"]) / "checkpoints" / "last.ckpt"
            assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1, "a valid run folder"
        else:
            assert trial.state == TrialState.COMPLETE and len(rows) == trial.params["trainer.max_epochs"]
            assert first_val_acc >= 0.3 or len(rows) == 1, "hopeless, but its epoch 0 was its last"
    assert (
        "pruned after epoch 0" in result.stdout
        and "failed: mnistlit: error: trainer.max_epochs" in result.stdout
    )


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A real PostgreSQL server on loopback, in a folder of its own, for this module's tests."""
    servers = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not servers:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    bindir = servers[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="mnistlit-postgres-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # it refuses root
    if as_postgres:
        shutil.chown(folder, "postgres")
    port = str(free_port())
    data = folder / "data"
    try:
        subprocess.run(
            [*as_postgres, bindir / "initdb", "-D", data, "-U", "mnistlit", "--auth", "trust"],
            check=True, capture_output=True,
        )  # fmt: skip
        server = subprocess.Popen(
            [*as_postgres, bindir / "postgres", "-D", data, "-p", port, "-h", "127.0.0.1", "-k", folder],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        ready = ["pg_isready", "-h", "127.0.0.1", "-p", port]
        while subprocess.run([bindir / ready[0], *ready[1:]], capture_output=True).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.2)
        created = [bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "mnistlit", "search"]
        subprocess.run(created, check=True, capture_output=True)
        yield f"postgresql://mnistlit@127.0.0.1:{port}/search"
        server.terminate()
        server.wait(timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_on_a_real_postgresql_server_exactly(
    tmp_path: Path, postgres: str
) -> None:
    md5 = write_synthetic_mnist(tmp_path / "data" / "mnist")
    tiny_config(tmp_path, md5, max_epochs=2)
    space = {
        "model.optimizer.init_args.lr": {"log_uniform": [1e-3, 3e-2]},
        "data.batch_size": {"choice": [32, 64]},
    }
    write_space(tmp_path, {**space, "pruner": {"class_path": "optuna.pruners.NopPruner"}})
    command = search_command("--trials", "4", "--storage", postgres)
    workers = [
        subprocess.Popen(
            command, cwd=tmp_path, env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    trials = trials_of(tmp_path, storage=postgres)
    assert [t.number for t in trials] == [0, 1, 2, 3], "exactly the trials asked for, each number once"
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4, "each trial in its own run folder"
    ran = [{n for n in range(4) if f"mnistlit: trial {n}: {{" in output} for output in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1] and ran[0] | ran[1] == {0, 1, 2, 3}, ran
    assert all("study space: 4 trials" in output for output in outputs), "each worker reports the whole study"

    best = max(trials, key=lambda t: t.value)
    assert_the_best_config_refits_to(tmp_path, best.value)
