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


def cause_in(e: BaseException | None, matches) -> BaseException | None:
    """The first exception in ``e``'s chain (itself, then what it was raised from or while handling) that
    ``matches``, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if matches(e):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def interrupt_in(e: BaseException | None) -> BaseException | None:
    """The KeyboardInterrupt (Ctrl-C, or the CLI's Terminated for SIGTERM) behind ``e``, if any. PyTorch's C++
    wraps what the Python code it calls raised (a file's write, a captured step) in a RuntimeError, so a
    signal's exception can arrive as one: it is the interrupt, not the error."""
    return cause_in(e, lambda c: isinstance(c, KeyboardInterrupt))


def reraise_interrupt(e: BaseException) -> None:
    """Raise the interrupt behind ``e`` where there is one (see :func:`interrupt_in`): for the handlers that turn
    an error into a failed run or task, which must not take Ctrl-C or SIGTERM for one."""
    interrupt = interrupt_in(e)
    if interrupt is not None and interrupt is not e:
        raise interrupt from None
