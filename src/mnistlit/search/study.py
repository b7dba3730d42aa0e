"""A search from start to end: check the config, open the study, run trials while any are queued,
then report: the table of trials, the best trial's config, Optuna's plots."""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from mnistlit.search import report
from mnistlit.search.pruning import STORAGE_VARIABLE, OptunaPruning
from mnistlit.search.space import SearchSpace, as_arguments, first_values, sample
from mnistlit.search.trials import (
    HEARTBEAT_SECONDS,
    Claimed,
    SearchStopped,
    claim,
    open_storage,
    open_study,
    retry_stale,
    run_fit,
)


def fit_config(fit_arguments: list[str]) -> Any:
    """The config each trial's fit parses, checked here so that a bad option is one line, not N failures."""
    from mnistlit.core.module import LitClassifier
    from mnistlit.runs.cli import MnistArgumentParser, MnistCLI
    from mnistlit.runs.data import MNISTDataModule
    from mnistlit.runs.trainer import Trainer

    class ConfigOnly(MnistCLI):
        def _set_seed(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

    command_line, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both it and args= are given
    try:
        cli = ConfigOnly(
            LitClassifier,
            MNISTDataModule,
            args=fit_arguments,
            run=False,
            trainer_class=Trainer,
            parser_class=MnistArgumentParser,
            auto_configure_optimizers=False,
            save_config_callback=None,
        )
    finally:
        sys.argv = command_line
    return cli.config


class Search:
    """What every trial of this search shares."""

    def __init__(
        self, space: SearchSpace, fit_arguments: list[str], config: Any, url: str, storage: RDBStorage
    ) -> None:
        self.space = space
        self.storage = storage
        self.fit_arguments = fit_arguments
        self.monitor: str = config.checkpoint.monitor
        seed = config.get("seed_everything")
        self.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        self.url = url

    def run(self, study: optuna.Study, claimed: Claimed) -> None:
        storage = self.storage
        # Trial n draws the same values whichever worker runs it, and no two trials draw alike.
        sampler = optuna.samplers.TPESampler(seed=None if self.seed is None else self.seed + claimed.number)
        own = optuna.load_study(study_name=study.study_name, storage=storage, sampler=sampler)
        trial = optuna.Trial(own, claimed.trial_id)
        params = sample(trial, self.space)
        resume: list[str] = []
        run_dir = trial.user_attrs.get("run_dir") if claimed.retries is not None else None
        if run_dir and (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
            resume = ["--ckpt_path", str(Path(run_dir) / "checkpoints" / "last.ckpt")]
        init_args: dict[str, Any] = {
            "study": study.study_name,
            "trial": claimed.number,
            "monitor": self.monitor,
        }
        if self.space.pruner is not None:
            init_args["pruner"] = self.space.pruner
        callback = {
            "class_path": f"{OptunaPruning.__module__}.{OptunaPruning.__name__}",
            "init_args": init_args,
        }
        command = [sys.executable, "-m", "mnistlit", "fit", *self.fit_arguments, *as_arguments(params)]
        command += [f"--trainer.callbacks+={json.dumps(callback)}", *resume]
        goes_on = f" (trial {claimed.retries} stopped: it goes on from {resume[1]})" if resume else ""
        print(f"mnistlit: trial {claimed.number}: {params}{goes_on}", flush=True)
        env = {**os.environ, STORAGE_VARIABLE: self.url}
        try:
            outcome = run_fit(
                command, env, f"trial {claimed.number}", lambda: storage.record_heartbeat(claimed.trial_id)
            )
        except (KeyboardInterrupt, SearchStopped) as e:
            trial.set_user_attr(
                "stopped", f"stopped by {'Ctrl-C' if isinstance(e, KeyboardInterrupt) else e}"
            )
            study.tell(claimed.number, state=TrialState.FAIL)
            retry_stale()(study, storage.get_trial(claimed.trial_id))  # the next search continues it
            raise
        ended = storage.get_trial(claimed.trial_id)
        if outcome.returncode == 0 and "pruned_at_epoch" in ended.user_attrs:
            study.tell(claimed.number, state=TrialState.PRUNED)
        elif outcome.returncode == 0 and "value" in ended.user_attrs:
            study.tell(claimed.number, ended.user_attrs["value"])
        else:
            reason = outcome.last_line if outcome.returncode else f"the fit recorded no {self.monitor}"
            trial.set_user_attr("failed", reason)
            study.tell(claimed.number, state=TrialState.FAIL)
            failures = [t for t in study.get_trials(deepcopy=False) if "failed" in t.user_attrs]
            if len(failures) < study.user_attrs["trials"]:
                study.enqueue_trial({})  # the study goes on: another trial in its place
        print(
            f"mnistlit: trial {claimed.number}: {report.outcome(storage.get_trial(claimed.trial_id))}",
            flush=True,
        )


def search(
    search_file: Path, trials: int, url: str | None, name: str | None, fit_arguments: list[str]
) -> int:
    """Run trials until none is queued or running; return how many ended (completed or pruned)."""
    from mnistlit.runs.folders import runs_folder

    space = SearchSpace(search_file)
    fit_config(fit_arguments + as_arguments(first_values(space)))  # the keys fit the config
    config = fit_config(fit_arguments)
    runs = runs_folder(config.trainer)
    if url is None:
        runs.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(runs / 'optuna.db').resolve()}"
    name = name or search_file.stem
    direction: Literal["maximize", "minimize"] = "maximize" if config.checkpoint.mode == "max" else "minimize"
    storage = open_storage(url)
    study = open_study(storage, name, direction, trials)
    work = Search(space, fit_arguments, config, url, storage)
    while True:
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again
        claimed = claim(study, storage)
        if claimed is not None:
            work.run(study, claimed)
        elif study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            time.sleep(HEARTBEAT_SECONDS)  # other workers' trials: wait until they end or go stale
        else:
            break
    return report.write(study, runs / "search" / name)
