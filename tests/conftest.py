"""The fixtures every test folder shares (the helpers they use are in tests/helpers.py)."""

from pathlib import Path

import pytest

from tests.helpers import CONFIGS, FIT, cli, tiny_config, write_synthetic_mnist


@pytest.fixture
def tiny_data(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A data_dir holding synthetic MNIST under ``mnist/``, and the files' MD5s."""
    data_dir = tmp_path / "data"
    return data_dir, write_synthetic_mnist(data_dir / "mnist")


@pytest.fixture
def workdir(tmp_path: Path, tiny_data: tuple[Path, dict[str, str]]) -> Path:
    """A folder laid out like a user's: data/ with the synthetic files and tiny.yaml."""
    _, md5 = tiny_data
    tiny_config(tmp_path, md5)
    return tmp_path


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """The run folder of one uninterrupted FIT, made once: the tests that stop and resume a
    run compare their final weights with it (a copy of it becomes their version_0)."""
    workdir = tmp_path_factory.mktemp("reference")
    tiny_config(workdir, write_synthetic_mnist(workdir / "data" / "mnist"))
    result = cli(workdir, *FIT)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "lightning_logs" / "version_0"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder with one run trained for an epoch (version_0), shared by a test module."""
    workdir = tmp_path_factory.mktemp("trained")
    tiny_config(workdir, write_synthetic_mnist(workdir / "data" / "mnist"), max_epochs=1)
    result = cli(workdir, "fit", *CONFIGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir
