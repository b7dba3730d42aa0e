"""The search file: config keys with the distributions their values are drawn from, and the pruner.

model.optimizer.init_args.lr: {log_uniform: [1.0e-4, 1.0e-1]}
data.batch_size: {choice: [128, 256, 512]}
trainer.max_epochs: {int: [2, 4]}
pruner:                      # optional, any optuna.pruners class; Optuna's MedianPruner otherwise
  class_path: optuna.pruners.MedianPruner
  init_args: {n_startup_trials: 2}
"""

import importlib
import json
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mnistlit.core.errors import MnistlitError, one_line

KINDS = ("uniform", "log_uniform", "int", "choice")


def distribution(key: str, spec: Any) -> BaseDistribution:
    """One key's ``{kind: values}`` as an Optuna distribution."""
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS):
        raise MnistlitError(f"{key}: expected one of {{{', '.join(KINDS)}: [...]}}, got {spec!r}")
    ((kind, values),) = spec.items()
    try:
        if kind == "choice":
            if not isinstance(values, list) or not values:
                raise ValueError("choice needs a list of values")
            return CategoricalDistribution(values)
        if not (isinstance(values, list) and len(values) == 2):
            raise ValueError(f"{kind} needs [low, high]")
        low, high = values
        if kind == "int":
            return IntDistribution(int(low), int(high))
        return FloatDistribution(float(low), float(high), log=kind == "log_uniform")
    except (ValueError, TypeError) as e:
        raise MnistlitError(f"{key}: {one_line(e)}") from e


class SearchSpace:
    """A search file, read once: ``distributions`` by config key and the ``pruner``'s spec."""

    def __init__(self, path: Path) -> None:
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise MnistlitError(f"{path} is not YAML: {one_line(e)}") from e
        if not isinstance(content, dict) or not content:
            raise MnistlitError(f"{path}: expected config keys with distributions")
        self.path = path
        self.pruner: dict[str, Any] | None = content.pop("pruner", None)
        self.distributions = {key: distribution(key, spec) for key, spec in content.items()}
        if not self.distributions:
            raise MnistlitError(f"{path}: no config key to search")
        self.make_pruner()  # a bad pruner is one line now, not a failure inside every trial

    def make_pruner(self) -> optuna.pruners.BasePruner:
        if self.pruner is None:
            return optuna.pruners.MedianPruner()
        try:
            module, _, name = str(self.pruner["class_path"]).rpartition(".")
            pruner = getattr(importlib.import_module(module), name)
            if not (isinstance(pruner, type) and issubclass(pruner, optuna.pruners.BasePruner)):
                raise TypeError(f"{self.pruner['class_path']} is not an Optuna pruner")
            return pruner(**(self.pruner.get("init_args") or {}))
        except (KeyError, ImportError, AttributeError, TypeError, ValueError) as e:
            raise MnistlitError(f"{self.path}: pruner: {one_line(e)}") from e


def as_arguments(params: dict[str, Any]) -> list[str]:
    """A trial's values as ``fit`` options (``--data.batch_size=256``); JSON is YAML, which the CLI reads."""
    return [f"--{key}={json.dumps(value)}" for key, value in params.items()]


def first_values(space: SearchSpace) -> dict[str, Any]:
    """A value of each distribution (its first choice, its low end), to check the keys before any trial."""
    values: dict[str, Any] = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = dist.choices[0]
        elif isinstance(dist, IntDistribution | FloatDistribution):
            values[key] = dist.low
    return values


def sample(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's value for each key, drawn by the study's sampler (or the values it was queued with)."""
    params: dict[str, Any] = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            params[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            params[key] = trial.suggest_int(key, dist.low, dist.high)
        elif isinstance(dist, FloatDistribution):
            params[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    return params
