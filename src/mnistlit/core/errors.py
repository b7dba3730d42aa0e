"""The one exception type the CLI turns into a single line instead of a traceback, and that line."""


class MnistlitError(Exception):
    """A problem the user can fix: a missing file, a bad value, a source that failed."""


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """The text of an error on one line (whitespace folded), at most ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
