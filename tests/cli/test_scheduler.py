"""Under SLURM, `--ckpt_path last` and `best` mean this job's own run: two array tasks that share
lightning_logs/, each started and then requeued as SLURM does it (the same job ids again)."""

from pathlib import Path

import pytest
import yaml

from tests.helpers import CONFIGS, cli


def as_array_task(monkeypatch: pytest.MonkeyPatch, task: int) -> None:
    """The variables SLURM sets for task ``task`` of array job 7100 (each task has a job id of its own)."""
    monkeypatch.setenv("SLURM_JOB_ID", str(7101 + task))
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7100")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))


def epochs_in(run: Path) -> int:
    return len((run / "history.csv").read_text().splitlines()) - 1


def test_two_array_tasks_sharing_lightning_logs_each_resume_their_own_run(workdir: Path, monkeypatch) -> None:
    runs = workdir / "lightning_logs"
    resume = ("--ckpt_path", "last")
    for task in (0, 1):  # each task's first start: the same command its requeue runs
        as_array_task(monkeypatch, task)
        started = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", "1", *resume)
        assert started.returncode == 0, started.stderr[-3000:]
        assert f"mnistlit: SLURM job 7100_{task} has no run under" in started.stderr
        assert (runs / f"version_{task}" / "slurm_job").read_text() == f"7100_{task}\n"

    for task, epochs in ((0, 2), (1, 3)):  # requeued: task 0's run is not the newest any more
        as_array_task(monkeypatch, task)
        requeued = cli(workdir, "fit", *CONFIGS, "--trainer.max_epochs", str(epochs), *resume)
        assert requeued.returncode == 0, requeued.stderr[-3000:]
        assert epochs_in(runs / f"version_{task}") == epochs, "went on in its own run"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]

    as_array_task(monkeypatch, 0)
    tested = cli(workdir, "test", *CONFIGS, "--ckpt_path", "best")
    assert tested.returncode == 0, tested.stderr[-3000:]
    config = yaml.safe_load((runs / "version_2" / "config.yaml").read_text())
    assert Path(config["ckpt_path"]).parent.parent.name == "version_0", "best: this task's own run"

    as_array_task(monkeypatch, 5)  # a task that never trained gets no other task's checkpoint
    refused = cli(workdir, "test", *CONFIGS, "--ckpt_path", "best")
    assert refused.returncode == 1
    assert "no run of SLURM job 7100_5 under" in refused.stderr.strip().splitlines()[-1]


def test_outside_slurm_last_still_needs_a_run(workdir: Path, monkeypatch) -> None:
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    result = cli(workdir, "fit", *CONFIGS, "--ckpt_path", "last")
    assert result.returncode == 1
    assert "no run under" in result.stderr.strip().splitlines()[-1]
    assert not (workdir / "lightning_logs").exists() or not list((workdir / "lightning_logs").iterdir())
