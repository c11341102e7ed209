"""The one exception type the CLI turns into a one-line message and exit code 2."""


class SparseddError(Exception):
    """A user-facing error: bad input, missing data, malformed files.

    The message is one line and says what to do about it.
    """


def notice(message: str) -> None:
    """One line on stderr about something the program handled itself (a damaged checkpoint set aside,
    a lock it waits for): shown, since it changes what happens or how long it takes."""
    import sys

    print(f"sparsedd: {message}", file=sys.stderr, flush=True)
