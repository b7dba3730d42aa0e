"""Two machines simulated on one: two torchrun "nodes" on loopback, each started on its own as a
cluster starts them, sharing one working folder as nodes share a cluster's filesystem."""

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.cli.test_trackers import free_port
from tests.e2e.test_ddp import RECORD, assert_two_disjoint_shards_of_the_training_set, printed_test_acc, run
from tests.helpers import CONFIGS, PYTHON, ROOT, tiny_config, write_synthetic_mnist

NODES = ("--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp")
NODES += ("--trainer.accelerator", "cpu")


OUTPUT: dict[int, tuple] = {}  # the output files of the nodes started last, by node rank


def start_nodes(
    workdirs: tuple[Path, Path], *args: str, nodes: tuple[str, ...] = NODES
) -> list[subprocess.Popen]:
    """``torchrun --nnodes 2 ... -m mnistlit ARGS`` started once per node rank, both at once, node
    rank r in ``workdirs[r]``. Each writes its output to temporary files, not pipes: a node whose
    pipe nobody reads while the other is awaited would block on a full one."""
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    started = []
    for rank, workdir in enumerate(workdirs):
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in ended()
        OUTPUT[rank] = (out, err)
        started.append(
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
                    *nodes,
                ],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )  # fmt: skip
        )
    return started


def ended(nodes: list[subprocess.Popen]) -> list[subprocess.CompletedProcess]:
    results = []
    for rank, node in enumerate(nodes):
        node.wait(timeout=300)
        out, err = OUTPUT.pop(rank)
        texts = []
        for file in (out, err):
            file.seek(0)
            texts.append(file.read())
            file.close()
        results.append(subprocess.CompletedProcess(node.args, node.returncode, *texts))
    return results


def on_two_nodes(workdir: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """Both nodes in one shared working folder, to their successful end."""
    results = ended(start_nodes((workdir, workdir), *args))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
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


# DDP's own wait for processes that do not answer is torch's 30 minutes; a test names a shorter one.
NODES_WITH_A_TIMEOUT = ("--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.accelerator", "cpu")
NODES_WITH_A_TIMEOUT += ("--trainer.strategy", "lightning.pytorch.strategies.DDPStrategy")
NODES_WITH_A_TIMEOUT += ("--trainer.strategy.timeout", "0:00:20")


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def kill_process_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process under it, as a machine that is switched off: torchrun's
    worker runs in a session of its own, so killing the agent's group would leave it running."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
    tree = {pid}
    while grown := {child for child, parent in parents.items() if parent in tree} - tree:
        tree |= grown
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


@pytest.mark.slow
def test_nodes_in_separate_folders_node_1_writes_nothing_and_a_lost_node_is_one_line(tmp_path: Path) -> None:
    folders = (tmp_path / "node0", tmp_path / "node1")
    for folder in folders:
        folder.mkdir()
        tiny_config(folder, write_synthetic_mnist(folder / "data" / "mnist"), max_epochs=2)
    node1_before = files_under(folders[1])
    for result in ended(start_nodes(folders, "fit", *CONFIGS, nodes=NODES_WITH_A_TIMEOUT)):
        assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (folders[0] / "lightning_logs").iterdir()) == ["version_0"]
    assert files_under(folders[1]) == node1_before, "node 1 wrote nothing, changed nothing"

    started = time.monotonic()
    node0, node1 = ended(
        start_nodes(folders, "fit", *CONFIGS, "--ckpt_path", "last", nodes=NODES_WITH_A_TIMEOUT)
    )
    assert (
        "mnistlit: error: --ckpt_path last: no run under lightning_logs/ has a last checkpoint yet"
        in node1.stderr
    )
    assert node0.returncode != 0 and time.monotonic() - started < 60, "node 0 waited for its timeout, no more"
    assert (
        "mnistlit: error: not every process of this DDP run joined within the strategy's timeout"
        in node0.stderr
    )
    assert (
        "[rank0]: Traceback" not in node0.stderr
        and "Traceback" not in node0.stderr.split("mnistlit: error")[0]
    )

    slow = ("--trainer.max_epochs", "6", "--trainer.callbacks+", "tests.probes.SlowSteps")
    nodes = start_nodes(folders, "fit", *CONFIGS, *slow, nodes=NODES_WITH_A_TIMEOUT)
    run = folders[0] / "lightning_logs" / "version_1"
    deadline = time.monotonic() + 120
    while not (run / "history.csv").exists():  # epoch 0 done: the run is mid-way
        assert nodes[0].poll() is None and time.monotonic() < deadline, "node 0 ended early"
        time.sleep(0.1)
    time.sleep(0.5)
    kill_process_tree(nodes[1].pid)
    killed = time.monotonic()
    node0 = ended(nodes)[0]
    assert time.monotonic() - killed < 30, "node 0 ended soon after node 1 was lost"
    assert node0.returncode != 0
    assert "mnistlit: error: another process of this DDP run stopped, so this one stopped too" in node0.stderr
    assert "[rank0]: Traceback" not in node0.stderr
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 22 <= last["global_step"] < 6 * 22, "loadable, saved at epoch 0's end or later, before the end"
