import signal
import sys


def _stopped_while_importing(signum, frame) -> None:
    sys.exit("mnistlit: stopped by SIGTERM during start-up; nothing was saved")


signal.signal(signal.SIGTERM, _stopped_while_importing)  # importing torch and Lightning takes seconds
try:
    from mnistlit.runs.cli import main
except KeyboardInterrupt:
    sys.exit("mnistlit: stopped by Ctrl-C during start-up; nothing was saved")

main()
