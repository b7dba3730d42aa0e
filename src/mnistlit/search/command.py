"""``mnistlit search``: the command line of a hyperparameter search on Optuna.

    python -m mnistlit search --config configs/speedrun.yaml --search configs/search/speedrun.yaml --trials 20

Every option but ``--search``, ``--trials``, ``--storage`` and ``--study`` goes to each trial's
``fit``. The objective is the best checkpoint's metric (``checkpoint.monitor``, ``val_acc``).
"""

import argparse
import signal
import sys
from pathlib import Path
from typing import NoReturn

from mnistlit.core.errors import MnistlitError, one_line


class SearchArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.exit(f"mnistlit: error: {message} (see: mnistlit search --help)")


def arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = SearchArgumentParser(
        prog="mnistlit search",
        description="Search hyperparameters with Optuna: each trial a `mnistlit fit` with the other options.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--search", type=Path, required=True, help="config keys with distributions (configs/search/)"
    )
    parser.add_argument(
        "--trials", type=int, required=True, help="the study's number of trials, all workers together"
    )
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<runs folder>/optuna.db)")
    parser.add_argument("--study", help="the study's name (default: the search file's name)")
    args, fit_arguments = parser.parse_known_args(argv)
    if args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}")
    if not args.search.is_file():
        parser.error(f"--search {args.search}: no such file")
    return args, fit_arguments


def stop_on_sigterm(signum, frame) -> None:
    from mnistlit.search.trials import SearchStopped

    raise SearchStopped("SIGTERM")


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    args, fit_arguments = arguments(argv)
    try:
        import optuna  # noqa: F401
    except ImportError:
        sys.exit("mnistlit: error: search needs the search extra: pip install 'mnistlit[search]'")
    from mnistlit.search.study import search
    from mnistlit.search.trials import SearchStopped

    try:
        ended = search(args.search, args.trials, args.storage, args.study, fit_arguments)
    except (KeyboardInterrupt, SearchStopped) as e:
        name = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else str(e)
        sys.exit(f"mnistlit: search stopped by {name}; the same command goes on with the study")
    except MnistlitError as e:
        sys.exit(f"mnistlit: error: {one_line(e, 1000)}")
    if ended < args.trials:
        sys.exit(f"mnistlit: the study ended {ended} of its {args.trials} trials (see the failures above)")
