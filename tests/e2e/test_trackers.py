"""Trackers as a user meets them outside one process: a real `mlflow server` over HTTP on loopback,
and an environment without a tracker's extra."""

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.cli.test_trackers import LOGGERS, PICTURES, artifacts, free_port
from tests.helpers import CLI_ENV, CONFIGS, PYTHON, cli, run_cli


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and a local artifact root; its address."""
    port = free_port()  # free now; the server takes it
    store = tmp_path / "server"
    store.mkdir()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
        "--artifacts-destination", str(store / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    log = (store / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=store)
    address = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{address}/health", timeout=1):
                    break
            except OSError:
                assert server.poll() is None, (store / "server.log").read_text()[-3000:]
                time.sleep(0.5)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_run_logged_to_a_real_mlflow_server_over_http(workdir: Path, mlflow_server: str) -> None:
    server = ("--config", str(LOGGERS / "mlflow_server.yaml"), "--trainer.logger.init_args.tracking_uri")
    fitted = cli(workdir, "fit", *CONFIGS, *server, mlflow_server, "--trainer.max_epochs", "2")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("mnistlit").experiment_id])
    assert run.info.run_name == "version_0" and run.data.params["trainer.max_epochs"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2
    files = artifacts(client, run.info.run_id)
    assert {"history.csv", "config.yaml"} | PICTURES <= files
    assert any(name.startswith("checkpoints/best-") for name in files)
    kept = (workdir / "server" / "artifacts").rglob("history.csv")  # the fixture put the server there
    history = (workdir / "lightning_logs/version_0/history.csv").read_text()
    assert [p.read_text() for p in kept] == [history], "the server keeps the artifacts, not this machine"
    assert not (workdir / "lightning_logs" / "mlartifacts").exists()


@pytest.mark.parametrize(("config", "extra"), [("mlflow.yaml", "mlflow"), ("wandb.yaml", "wandb")])
def test_a_tracker_without_its_extra_is_one_line_before_training(
    workdir: Path, config: str, extra: str
) -> None:
    has_it = (
        subprocess.run([PYTHON, "-c", f"import {extra}"], capture_output=True, env=CLI_ENV).returncode == 0
    )
    if has_it:
        pytest.skip(f"{PYTHON} has {extra}: this test needs the runtime without it (make test's .venv)")
    result = run_cli(workdir, "fit", *CONFIGS, "--config", str(LOGGERS / config))
    assert result.returncode == 1
    logger = {"mlflow": "MLFlowLogger", "wandb": "WandbLogger"}[extra]
    assert result.stderr.strip().splitlines()[-1] == (
        f"mnistlit: error: {logger} needs the {extra} extra: pip install 'mnistlit[{extra}]'"
    )
    assert "Traceback" not in result.stderr
    assert not (workdir / "lightning_logs").exists(), "nothing made before the one line"
