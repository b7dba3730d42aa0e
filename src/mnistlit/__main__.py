"""``mnistlit`` and ``python -m mnistlit``: the command line, started so that it can stop at any moment."""

import gc
import signal
import sys


def _stopped_while_importing(signum, frame) -> None:
    sys.exit("mnistlit: stopped by SIGTERM during start-up; nothing was saved")


def main() -> None:
    if sys.argv[1:] == ["--version"]:  # an answer in 0.1 s, not after the seconds torch takes to import
        from mnistlit import __version__

        print(f"mnistlit {__version__}")
        return
    if sys.argv[1:2] == ["search"]:  # many fits, each in a process of its own: not a Trainer method
        from mnistlit.search.command import main as search

        search(sys.argv[2:])
        return
    signal.signal(signal.SIGTERM, _stopped_while_importing)  # importing torch and Lightning takes seconds
    try:
        from mnistlit.runs.cli import main as run_command
    except KeyboardInterrupt:
        sys.exit("mnistlit: stopped by Ctrl-C during start-up; nothing was saved")
    try:
        run_command()
    finally:
        # Everything is saved and closed by now. The interpreter's clean-up collects garbage again as
        # it tears down each of torch's and Lightning's modules: about a second on 2 cores, which a
        # stopped server or a finished run would otherwise spend before exiting. Frozen objects are skipped.
        gc.freeze()


if __name__ == "__main__":
    main()
