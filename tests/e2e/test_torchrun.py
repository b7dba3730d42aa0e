"""Two machines simulated on one: two torchrun "nodes" on loopback, each started on its own as a
cluster starts them, sharing one working folder as nodes share a cluster's filesystem."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.cli.test_trackers import free_port
from tests.e2e.test_ddp import RECORD, assert_two_disjoint_shards_of_the_training_set, printed_test_acc, run
from tests.helpers import CONFIGS, PYTHON, ROOT, tiny_config, write_synthetic_mnist

NODES = ("--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp")
NODES += ("--trainer.accelerator", "cpu")


def on_two_nodes(workdir: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """``torchrun --nnodes 2 ... -m mnistlit ARGS`` started once per node rank, both at once."""
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    nodes = [
        subprocess.Popen(
            [
                *torchrun,
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                "-m",
                "mnistlit",
                *args,
                *NODES,
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    results = []
    for node in nodes:
        out, err = node.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(node.args, node.returncode, out, err))
        assert node.returncode == 0, err[-3000:]
    return results


@pytest.mark.slow
def test_two_torchrun_nodes_make_one_run_and_resume_it(tmp_path: Path) -> None:
    md5 = write_synthetic_mnist(tmp_path / "data" / "mnist")
    tiny_config(tmp_path, md5, max_epochs=2)
    on_two_nodes(tmp_path, "fit", *CONFIGS, *RECORD)

    runs = tmp_path / "lightning_logs"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0"], "one run folder, made by node 0"
    assert_two_disjoint_shards_of_the_training_set(tmp_path, md5, epochs=(0, 1))

    last = runs / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2 * 22
    on_two_nodes(tmp_path, "fit", *CONFIGS, *RECORD, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3 * 22
    assert all((tmp_path / "shards" / f"rank{rank}-epoch2.json").is_file() for rank in (0, 1)), (
        "both nodes went on from the same step: epoch 2 on each"
    )
    assert sorted(p.name for p in runs.iterdir()) == ["version_0"], "the run went on in its folder"
    history = (runs / "version_0" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history] == ["epoch", "0", "1", "2"]

    best = ("--ckpt_path", "best")
    (node0, _) = on_two_nodes(tmp_path, "test", *CONFIGS, *best)
    assert printed_test_acc(node0) == printed_test_acc(run(tmp_path, "test", *CONFIGS, *best)), (
        "a test on two nodes scores the test set as one process does"
    )
