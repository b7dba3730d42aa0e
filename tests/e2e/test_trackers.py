"""Trackers as a user meets them outside one process: a real `mlflow server` over HTTP on loopback,
and an environment without a tracker's extra."""

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.cli.test_trackers import LOGGERS, PICTURES, artifacts, free_port, uploaded
from tests.e2e.test_browser import CHROMIUM
from tests.helpers import CLI_ENV, CONFIGS, PYTHON, cli, run_cli, tiny_config, write_synthetic_mnist


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on 127.0.0.1 (a SQLite backend, a local artifact root) and a folder whose
    run logged to it over HTTP: the server's address and that folder."""
    store, workdir = tmp_path_factory.mktemp("server"), tmp_path_factory.mktemp("trained")
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", str(port := free_port()), "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
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
        tiny_config(workdir, write_synthetic_mnist(workdir / "data" / "mnist"))
        uri = ("--trainer.logger.init_args.tracking_uri", address)
        fitted = cli(workdir, "fit", *CONFIGS, "--config", str(LOGGERS / "mlflow_server.yaml"), *uri)
        assert fitted.returncode == 0, fitted.stderr[-3000:]
        yield address, workdir
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_run_logged_to_a_real_mlflow_server_over_http(logged: tuple[str, Path]) -> None:
    address, workdir = logged
    client = MlflowClient(address)
    (run,) = client.search_runs([client.get_experiment_by_name("mnistlit").experiment_id])
    assert run.info.run_name == "version_0" and run.data.params["trainer.max_epochs"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2
    files = artifacts(client, run.info.run_id)
    assert {"history.csv", "config.yaml"} | PICTURES <= files
    assert any(name.startswith("checkpoints/best-") for name in files)
    history = uploaded(client, run.info.run_id, "history.csv")
    assert history == (workdir / "lightning_logs/version_0/history.csv").read_text()
    assert not (workdir / "lightning_logs" / "mlartifacts").exists(), (
        "the server keeps them, not this machine"
    )


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (.ci/run installs Debian's)")
def test_the_mlflow_ui_shows_the_run_with_its_metrics(logged: tuple[str, Path], tmp_path) -> None:
    """Set MNISTLIT_MLFLOW_SCREENSHOT to a path to keep the screenshot (docs/mlflow.png is one)."""
    from playwright.sync_api import sync_playwright

    address, _ = logged
    client = MlflowClient(address)
    (run,) = client.search_runs([client.get_experiment_by_name("mnistlit").experiment_id])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(f"{address}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics")
        page.get_by_text("version_0").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Close", exact=True).click()  # MLflow 3's assistant panel
        for chart in ("train_loss", "train_acc", "val_loss", "val_acc"):
            page.get_by_text(chart, exact=True).first.wait_for(timeout=60_000)
        page.screenshot(path=os.environ.get("MNISTLIT_MLFLOW_SCREENSHOT") or str(tmp_path / "mlflow.png"))
        browser.close()


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
