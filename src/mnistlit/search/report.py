"""What a search leaves: the table of its trials, the best trial's config, Optuna's two plots."""

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mnistlit.files import atomic_write
from mnistlit.search.pruning import OptunaPruning

ENDED = (TrialState.COMPLETE, TrialState.PRUNED)
COLUMNS = ("number", "state", "value", "seconds", "params", "run folder", "note")


def outcome(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return f"completed, value {trial.value:.4f}"
    if trial.state == TrialState.PRUNED:
        return f"pruned after epoch {trial.user_attrs.get('pruned_at_epoch')}"
    return f"failed: {note(trial)}"


def note(trial: FrozenTrial) -> str:
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("failed") or trial.user_attrs.get("stopped") or "its worker stopped"
    retried = trial.system_attrs.get("failed_trial")
    return f"continues trial {retried}" if retried is not None and trial.state in ENDED else ""


def row(trial: FrozenTrial) -> dict[str, str]:
    seconds = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "number": str(trial.number),
        "state": trial.state.name.lower(),
        "value": "" if trial.value is None else f"{trial.value:.4f}",
        "seconds": "" if seconds is None else f"{seconds:.1f}",
        "params": " ".join(f"{key}={value}" for key, value in trial.params.items()),
        "run folder": trial.user_attrs.get("run_dir", ""),
        "note": note(trial),
    }


def table(rows: list[dict[str, str]]) -> str:
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(r[c].ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def best_config(trial: FrozenTrial, study: str) -> str | None:
    """The best trial's config.yaml, as a config to train with: without the search's callback."""
    run_dir = trial.user_attrs.get("run_dir")
    saved = Path(run_dir) / "config.yaml" if run_dir else None
    if saved is None or not saved.is_file():
        return None
    config = yaml.safe_load(saved.read_text())
    config = config.get("fit", config)
    ours = f"{OptunaPruning.__module__}.{OptunaPruning.__name__}"
    callbacks = [c for c in config["trainer"].get("callbacks") or [] if c.get("class_path") != ours]
    config["trainer"]["callbacks"] = callbacks or None
    config["ckpt_path"] = None
    header = (
        f"# The best trial of study {study}: trial {trial.number}, {trial.value:.4f}, run {run_dir}.\n"
        "# Train with it: python -m mnistlit fit --config THIS_FILE\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def save_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's optimisation history and parameter importances, drawn with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # a command line process: no window
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    from mnistlit.runs.plots import pixels, save_png

    saved = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    drawings: list[tuple[str, Callable[[optuna.Study], Any]]] = [
        ("optimization_history.png", plots.plot_optimization_history)
    ]
    if len(complete) >= 2:  # importances compare completed trials
        drawings.append(("param_importances.png", plots.plot_param_importances))
    for filename, plot in drawings:
        figure = plot(study).get_figure(root=True)
        assert figure is not None, "Optuna draws on a pyplot figure"
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        save_png(pixels(figure), folder / filename)
        plt.close(figure)
        saved.append(folder / filename)
    return saved


def write(study: optuna.Study, folder: Path) -> int:
    """Print the table and write the files; return how many trials ended (completed or pruned)."""
    trials = study.get_trials(deepcopy=False)
    rows = [row(t) for t in trials]
    print(f"\nstudy {study.study_name}: {len(trials)} trials\n{table(rows)}\n", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(folder / "trials.csv", buffer.getvalue().encode())
    print(f"trials:     {folder / 'trials.csv'}")
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
        config = best_config(best, study.study_name)
        if config is not None:
            atomic_write(folder / "best.yaml", config.encode())
            print(f"best:       trial {best.number}, {best.value:.4f}: {folder / 'best.yaml'}")
            print(f"train it:   python -m mnistlit fit --config {folder / 'best.yaml'}")
        for path in save_plots(study, folder):
            print(f"plot:       {path}")
    return sum(t.state in ENDED for t in trials)
