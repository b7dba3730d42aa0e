"""The one exception type the CLI turns into a single line instead of a traceback."""


class MnistlitError(Exception):
    """A problem the user can fix: a missing file, a bad value, a source that failed."""
