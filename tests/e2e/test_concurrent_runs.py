"""Two processes at once: each run has one writer and its own folder."""

from pathlib import Path

from tests.helpers import CONFIGS, FIT, SLOW_VALIDATION, assert_one_clear_line, cli, runs, start_cli, wait_for


def test_a_second_process_writing_the_same_run_is_refused(workdir: Path) -> None:
    first = cli(workdir, *FIT, "--trainer.max_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    longer = (*FIT, "--trainer.max_epochs", "40", "--ckpt_path", "last", *SLOW_VALIDATION)
    writer = start_cli(workdir, *longer)
    try:
        wait_for(workdir / "validating", writer)
        second = cli(workdir, *longer)
        assert_one_clear_line(second, "lightning_logs/version_0 is in use", f"PID {writer.pid}")
    finally:
        writer.kill()
        writer.communicate()
    assert runs(workdir) == ["version_0"]
    assert (
        sorted(p.name for p in (workdir / "lightning_logs" / "version_0" / "checkpoints").glob("best*")) != []
    )
    assert len(list((workdir / "lightning_logs" / "version_0" / "checkpoints").glob("best*"))) == 1


def test_two_runs_started_together_get_their_own_folders(workdir: Path) -> None:
    args = ("fit", *CONFIGS, "--trainer.max_epochs", "1")
    first, second = start_cli(workdir, *args), start_cli(workdir, *args)
    for process in (first, second):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    runs = sorted((workdir / "lightning_logs").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run in runs:
        assert (run / "config.yaml").is_file()
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1
