"""``mnistlit search``'s bad inputs, each one line before any trial runs (in this process)."""

import contextlib
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from mnistlit.search.command import main
from mnistlit.search.pruning import STORAGE_VARIABLE
from mnistlit.search.space import SearchSpace, as_arguments, first_values
from mnistlit.search.study import fit_config
from mnistlit.search.trials import open_storage, open_study
from tests.cli.test_trackers import free_port
from tests.helpers import CONFIGS, ROOT, assert_one_clear_line, cli, tiny_config, write_synthetic_mnist

LR = "model.optimizer.init_args.lr"


def search(workdir: Path, space: dict | None, *args: str) -> subprocess.CompletedProcess:
    """``mnistlit search`` in this process, in ``workdir``, with the space written to space.yaml."""
    if space is not None:
        (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    out, err = io.StringIO(), io.StringIO()
    sigterm = signal.getsignal(signal.SIGTERM)
    code = 0
    with contextlib.chdir(workdir), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*CONFIGS, "--search", "space.yaml", "--trials", "2", *args])
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            code = 1 if isinstance(e.code, str) else e.code or 0
        finally:
            signal.signal(signal.SIGTERM, sigterm)
    return subprocess.CompletedProcess(["mnistlit", "search", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    tiny_config(tmp_path, write_synthetic_mnist(tmp_path / "data" / "mnist"))
    return tmp_path


@pytest.mark.parametrize(
    ("space", "phrases"),
    [
        ({LR: {"log_uniform": [1e-3]}}, (f"{LR}: log_uniform needs [low, high]",)),
        (
            {LR: {"between": [1e-3, 1e-1]}},
            (f"{LR}: expected one of {{uniform, log_uniform, int, choice: [...]}}",),
        ),
        ({LR: {"uniform": [0.1, 0.01]}}, (f"{LR}:", "low")),
        ({"pruner": {"class_path": "optuna.pruners.MedianPruner"}}, ("no config key to search",)),
        (
            {LR: {"choice": [0.1]}, "pruner": {"class_path": "optuna.pruners.NoSuchPruner"}},
            ("pruner:", "NoSuchPruner"),
        ),
        ({"model.optimizer.init_args.learning_rate": {"choice": [0.1]}}, ("learning_rate",)),
        ({LR: {"choice": ["fast"]}}, ("lr",)),
    ],
    ids=[
        "one bound",
        "unknown kind",
        "low above high",
        "no key",
        "no such pruner",
        "not a config key",
        "bad value",
    ],
)
def test_a_bad_search_file_is_one_line_before_any_trial(
    workdir: Path, space: dict, phrases: tuple[str, ...]
) -> None:
    result = search(workdir, space)
    assert_one_clear_line(result, *phrases)
    assert not (workdir / "lightning_logs").exists(), "no study, no run folder"


def test_bad_options_are_one_line(workdir: Path) -> None:
    space = {LR: {"choice": [0.01]}}
    assert_one_clear_line(search(workdir, space, "--trials", "0"), "--trials must be at least 1, got 0")
    missing = search(workdir, None, "--search", "nowhere.yaml")
    assert_one_clear_line(missing, "--search nowhere.yaml: no such file")
    refused = search(
        workdir, space, "--storage", f"postgresql://mnistlit:secret@127.0.0.1:{free_port()}/search"
    )
    assert_one_clear_line(refused, "cannot open the study storage postgresql://mnistlit:***@127.0.0.1")
    assert "secret" not in refused.stderr


def test_a_study_cannot_be_asked_for_fewer_trials_than_it_was(workdir: Path) -> None:
    (workdir / "lightning_logs").mkdir()
    url = f"sqlite:///{workdir / 'lightning_logs' / 'optuna.db'}"
    open_study(open_storage(url), "space", "maximize", 3)
    result = search(workdir, {LR: {"choice": [0.01]}})
    assert_one_clear_line(result, "study space was asked for 3 trials; --trials can grow it, not shrink it")
    queued = optuna.load_study(study_name="space", storage=url).get_trials()
    assert [t.state.name for t in queued] == ["WAITING"] * 3, "nothing ran"


def test_without_the_search_extra_it_is_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` meets where it is not installed
    result = search(workdir, {LR: {"choice": [0.01]}})
    assert_one_clear_line(result, "search needs the search extra: pip install 'mnistlit[search]'")


def test_the_shipped_search_fits_the_speedrun_config() -> None:
    space = SearchSpace(ROOT / "configs" / "search" / "speedrun.yaml")
    values = first_values(space)
    config = fit_config(["--config", str(ROOT / "configs" / "speedrun.yaml"), *as_arguments(values)])
    for key, value in values.items():
        assert config[key] == value
    assert isinstance(space.make_pruner(), optuna.pruners.PercentilePruner)


@pytest.mark.parametrize(("max_epochs", "pruned"), [(2, True), (1, False)], ids=["epochs left", "last epoch"])
def test_a_trial_is_pruned_only_where_stopping_saves_epochs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, max_epochs: int, pruned: bool
) -> None:
    """Inside a fit: a pruner that calls every trial hopeless (val_acc never reaches 2) stops it
    after epoch 0 through Lightning, unless epoch 0 is its last; then the fit simply ends."""
    (workdir / "lightning_logs").mkdir()
    url = f"sqlite:///{workdir / 'lightning_logs' / 'optuna.db'}"
    study = open_study(open_storage(url), "space", "maximize", 1)
    monkeypatch.setenv(STORAGE_VARIABLE, url)
    pruner = {"class_path": "optuna.pruners.ThresholdPruner", "init_args": {"lower": 2.0}}
    callback = {
        "class_path": "mnistlit.search.pruning.OptunaPruning",
        "init_args": {"study": "space", "trial": 0},
    }
    callback["init_args"]["pruner"] = pruner
    study.ask()  # trial 0, queued when the study was made, now running
    result = cli(
        workdir,
        "fit",
        *CONFIGS,
        f"--trainer.max_epochs={max_epochs}",
        f"--trainer.callbacks+={json.dumps(callback)}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = optuna.load_study(study_name="space", storage=url).get_trials()
    assert list(trial.intermediate_values) == [0], "epoch 0 was reported, and the fit went no further"
    assert ("pruned_at_epoch" in trial.user_attrs) is pruned
    assert trial.user_attrs["run_dir"] == str(workdir / "lightning_logs" / "version_0")
    assert trial.user_attrs["value"] == trial.intermediate_values[0], "the best checkpoint's val_acc"
