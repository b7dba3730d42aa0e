"""A real one-node SLURM cluster (Debian's slurm-wlm, started by the test): an array job of two
tasks sharing lightning_logs/ is requeued mid-run, and each task resumes its own run."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_trackers import free_port
from tests.helpers import BASE_CONFIG, PYTHON, ROOT, tiny_config, write_synthetic_mnist

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """munged, slurmctld and slurmd on this machine, with their state in a folder of their own;
    the environment in which sbatch, squeue and scontrol talk to them."""
    if not all(Path(daemon).exists() for daemon in DAEMONS):
        pytest.skip("slurm-wlm is not installed (.ci/run installs Debian's)")
    if os.geteuid() != 0:
        pytest.skip("slurmd runs jobs as their users: it needs root (CI runs as root)")
    folder = Path(tempfile.mkdtemp(prefix="mnistlit-slurm-"))
    node = socket.gethostname().split(".")[0]
    munge_socket = folder / "munge.socket"
    conf = folder / "slurm.conf"
    conf.write_text(
        f"""ClusterName=mnistlit
SlurmctldHost={node}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
KillWait=30
ReturnToService=2
NodeName={node} CPUs=2 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    munge = ["--force", "--foreground", f"--socket={munge_socket}", f"--pid-file={folder}/munged.pid"]
    munge += [f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed"]
    daemons = [subprocess.Popen([DAEMONS[0], *munge], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        while not munge_socket.exists():
            assert daemons[0].poll() is None, (folder / "munged.log").read_text()
            time.sleep(0.1)
        for daemon in DAEMONS[1:]:
            (folder / "state").mkdir(exist_ok=True)
            (folder / "spool").mkdir(exist_ok=True)
            daemons.append(
                subprocess.Popen(
                    [daemon, "-D", "-f", str(conf)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 60
        while (
            "idle"
            not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
        ):
            assert all(d.poll() is None for d in daemons) and time.monotonic() < deadline, (
                "SLURM did not start"
            )
            time.sleep(0.5)
        yield env
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def job_states(job: str, env: dict[str, str]) -> list[str]:
    listed = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True, text=True)
    return listed.stdout.split()


def wait(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_requeued_array_job_resumes_each_task_in_its_own_run(slurm: dict[str, str]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mnistlit-slurm-run-"))  # the daemons run jobs as root
    try:
        tiny_config(workdir, write_synthetic_mnist(workdir / "data" / "mnist"), max_epochs=4)
        (workdir / "job.sh").write_text(
            f"""#!/bin/bash
#SBATCH --requeue --array=0-1 --cpus-per-task=1 --output=job-%a.out --open-mode=append
export PYTHONPATH={ROOT} OMP_NUM_THREADS=1
exec {PYTHON} -m mnistlit fit --config {BASE_CONFIG} --config tiny.yaml \\
    --trainer.callbacks+ tests.probes.SlowSteps --early_stopping.patience 10 --ckpt_path last
"""
        )
        submitted = subprocess.run(
            ["sbatch", "--parsable", "job.sh"], cwd=workdir, env=slurm, capture_output=True, text=True
        )
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip().split(";")[0]
        runs = workdir / "lightning_logs"

        def each_task_has_an_epoch() -> bool:
            histories = list(runs.glob("version_*/history.csv"))
            return len(histories) == 2 and all(len(h.read_text().splitlines()) >= 2 for h in histories)

        wait(each_task_has_an_epoch, "each task has trained an epoch")
        requeued = subprocess.run(["scontrol", "requeue", job], env=slurm, capture_output=True, text=True)
        assert requeued.returncode == 0, requeued.stderr
        wait(lambda: job_states(job, slurm) == ["PENDING", "PENDING"], "both tasks are pending again")
        # SLURM holds a requeued job back for two minutes; a test has no need to wait for that.
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm, check=True)
        wait(lambda: not job_states(job, slurm), "both tasks have ended", timeout=180)

        assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"], "no third run"
        for task in (0, 1):
            output = (workdir / f"job-{task}.out").read_text()
            (run,) = [p for p in runs.iterdir() if (p / "slurm_job").read_text().strip() == f"{job}_{task}"]
            assert "stopped by SIGTERM at step" in output and f"saved lightning_logs/{run.name}/" in output
            last = f"lightning_logs/{run.name}/checkpoints/last.ckpt"
            assert f"Restoring states from the checkpoint path at {last}" in output
            epochs = [row.split(",")[0] for row in (run / "history.csv").read_text().splitlines()[1:]]
            assert epochs == ["0", "1", "2", "3"], f"task {task} went on in {run.name} to its last epoch"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
