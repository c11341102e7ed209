"""The one exception type the CLI turns into a one-line message and exit code 2."""


class SparseddError(Exception):
    """A user-facing error: bad input, missing data, malformed files.

    The message is one line and says what to do about it.
    """
