"""configs/loggers/*.yaml over a recipe: MLflow (a SQLite store), W&B (offline), CSV and several
at once each get the whole run, and a resume goes on in the same tracker run."""

import csv
import json
import socket
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers import CONFIGS, ROOT, cli, wandb_records

LOGGERS = ROOT / "configs" / "loggers"
PICTURES = {"pictures/train_digits.png", "pictures/learning_curves.png"}


@pytest.fixture(autouse=True)
def stores_as_in_a_new_process():
    """MLflow keeps one store per tracking URI for the life of a process; each test's fit is a new
    process's in another folder, so the relative ``sqlite:///lightning_logs/mlflow.db`` must open
    that folder's database."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    SqlAlchemyStore._engine_map.clear()


def artifacts(client: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, folder):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def uploaded(client: MlflowClient, run_id: str, name: str) -> str:
    """The text of a file of the run, as the tracker holds it."""
    with tempfile.TemporaryDirectory() as folder:
        return Path(client.download_artifacts(run_id, name, folder)).read_text()


def mlflow_runs(workdir: Path) -> tuple[MlflowClient, list]:
    """The runs of the store mlflow.yaml names (relative to the folder mnistlit ran in), oldest first."""
    client = MlflowClient(f"sqlite:///{workdir}/lightning_logs/mlflow.db")
    experiment = client.get_experiment_by_name("mnistlit")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def val_acc_steps(client: MlflowClient, run_id: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "val_acc")]


def assert_whole_mlflow_run(client: MlflowClient, run, run_folder: Path, epochs: int) -> None:
    assert run.info.run_name == run_folder.name, "the MLflow run is named after its run folder"
    assert run.data.params["trainer.max_epochs"] == str(epochs)
    assert run.data.params["data.batch_size"] == "32" and run.data.params["model.net.class_path"]
    assert len(val_acc_steps(client, run.info.run_id)) == epochs
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(run.data.metrics)
    (best,) = (run_folder / "checkpoints").glob("best-*.ckpt")
    assert run.data.tags["best_checkpoint"] == str(best.resolve())
    files = artifacts(client, run.info.run_id)
    assert {"history.csv", "config.yaml", f"checkpoints/{best.name}"} | PICTURES <= files
    assert uploaded(client, run.info.run_id, "history.csv") == (run_folder / "history.csv").read_text()


def test_an_mlflow_run_gets_the_whole_run_and_a_resume_continues_it(workdir: Path) -> None:
    mlflow = ("--config", str(LOGGERS / "mlflow.yaml"))
    fitted = cli(workdir, "fit", *CONFIGS, *mlflow, "--trainer.max_epochs", "2")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    run_folder = workdir / "lightning_logs" / "version_0"
    assert {"history.csv", "config.yaml", "train_digits.png", "checkpoints/last.ckpt"} <= {
        str(p.relative_to(run_folder)) for p in run_folder.rglob("*")
    }
    client, (run,) = mlflow_runs(workdir)
    assert_whole_mlflow_run(client, run, run_folder, epochs=2)

    tested = cli(workdir, "test", *CONFIGS, *mlflow, "--ckpt_path", "best")
    assert tested.returncode == 0, tested.stderr[-3000:]
    client, (run,) = mlflow_runs(workdir)  # the test adds to the run its checkpoint came from
    assert "test_acc" in run.data.metrics and run.data.params["trainer.max_epochs"] == "2"
    files = artifacts(client, run.info.run_id)
    assert {"pictures/confusion_matrix.png", "pictures/misclassified.png", "test/config.yaml"} <= files
    config = uploaded(client, run.info.run_id, "config.yaml")
    assert config == (run_folder / "config.yaml").read_text(), "the fit's config stays"

    resumed = cli(workdir, "fit", *CONFIGS, *mlflow, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, runs = mlflow_runs(workdir)
    assert len(runs) == 1, "the resumed fit went on in its MLflow run, not in a new one"
    steps = val_acc_steps(client, run.info.run_id)
    assert len(steps) == 3 and steps == sorted(steps)
    assert client.get_run(run.info.run_id).data.params["trainer.max_epochs"] == "2", "params: as it started"

    other = f"sqlite:///{workdir}/lightning_logs/other.db"  # a store without the checkpoint's run
    tested = cli(
        workdir,
        "test",
        *CONFIGS,
        *mlflow,
        "--trainer.logger.init_args.tracking_uri",
        other,
        "--ckpt_path",
        "best",
    )
    assert tested.returncode == 0, tested.stderr[-3000:]
    client = MlflowClient(other)
    (elsewhere,) = client.search_runs([client.get_experiment_by_name("mnistlit").experiment_id])
    assert elsewhere.info.run_name == "version_2" and "test_acc" in elsewhere.data.metrics
    assert sorted(p.name for p in workdir.iterdir()) == ["data", "lightning_logs", "tiny.yaml"]


def test_many_loggers_each_get_the_whole_run(workdir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fitted = cli(
        workdir, "fit", *CONFIGS, "--config", str(LOGGERS / "many.yaml"), "--trainer.max_epochs", "2"
    )
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    run_folder = workdir / "lightning_logs" / "version_0"
    events = EventAccumulator(str(run_folder)).Reload()
    assert len(events.Scalars("val_acc")) == 2 and "train_digits" in events.Tags()["images"]
    with open(run_folder / "metrics.csv") as table:
        assert len([row for row in csv.DictReader(table) if row["val_acc"]]) == 2
    client, (run,) = mlflow_runs(workdir)
    assert_whole_mlflow_run(client, run, run_folder, epochs=2)
    assert sorted(p.name for p in workdir.iterdir()) == ["data", "lightning_logs", "tiny.yaml"]


def test_a_wandb_offline_run_holds_the_config_the_metrics_and_the_images(workdir: Path) -> None:
    import wandb as wandb_sdk

    wandb = ("--config", str(LOGGERS / "wandb.yaml"))
    fitted = cli(workdir, "fit", *CONFIGS, *wandb, "--trainer.max_epochs", "2")
    wandb_sdk.finish()  # what the end of a process does: the last records reach the file
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    (offline,) = (workdir / "lightning_logs" / "wandb").glob("offline-run-*")
    records = list(wandb_records(next(offline.glob("run-*.wandb"))))
    config = {
        i.key: json.loads(i.value_json) for r in records if r.HasField("config") for i in r.config.update
    }
    assert config["trainer"]["max_epochs"] == 2 and config["data"]["batch_size"] == 32
    history = [
        {i.key or "/".join(i.nested_key) for i in r.history.item} for r in records if r.HasField("history")
    ]
    assert len([row for row in history if "val_acc" in row]) == 2
    assert {"train_digits/filenames", "learning_curves/filenames"} <= set().union(*history)
    images = {p.name.split("_")[0] for p in (offline / "files" / "media" / "images").glob("*.png")}
    assert images == {"train", "learning"}
    assert {"history.csv", "config.yaml"} <= {p.name for p in (offline / "files").iterdir()}
    run = next(r.run for r in records if r.HasField("run"))
    assert run.display_name == "version_0"

    resumed = cli(workdir, "fit", *CONFIGS, *wandb, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    wandb_sdk.finish()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    later = max((workdir / "lightning_logs" / "wandb").glob("offline-run-*"))
    assert later != offline and later.name.endswith(run.run_id), "the same W&B run, continued"
    assert sorted(p.name for p in workdir.iterdir()) == ["data", "lightning_logs", "tiny.yaml"]


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_tracker_that_cannot_start_is_one_line_before_training(workdir: Path) -> None:
    server = ("--config", str(LOGGERS / "mlflow_server.yaml"), "--trainer.logger.init_args.tracking_uri")
    cases = {
        f"http://127.0.0.1:{free_port()}": "does not answer ([Errno 111] Connection refused)",
        "htp://127.0.0.1:5000": "MLFlowLogger cannot start: got unsupported URI 'htp://127.0.0.1:5000'",
    }
    for uri, said in cases.items():
        result = cli(workdir, "fit", *CONFIGS, *server, uri)
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("mnistlit: error: ") and said in last, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "Epoch 0" not in result.stderr
        assert not list(workdir.glob("lightning_logs/version_*")), "no run folder left behind"
