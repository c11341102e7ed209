"""A registry of names: one per kind of thing a configuration names (data sets, models, noise types,
pruning methods, retraining modes, analyses), so that adding one is one registration and the names
are listed in one place."""

from __future__ import annotations

import functools
from typing import Any, Callable, Generic, TypeVar

from .errors import SparseddError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry, in registration order; an unknown name is a one-line error that lists the choices."""

    def __init__(self, what: str) -> None:
        self.what = what  # the kind, as error messages name it: "unknown <what> 'x'"
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: Any = None) -> Any:
        """Register ``entry`` under ``name`` and return it; without ``entry``, a decorator that registers
        what it decorates."""
        if entry is None:
            return functools.partial(self.register, name)
        if name in self._entries:  # two registrations of one name would shadow each other silently
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        del self._entries[name]

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise SparseddError(f"unknown {self.what} {name!r}; choose one of {', '.join(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def where(self, test: Callable[[T], bool]) -> tuple[str, ...]:
        """The names whose entry passes ``test`` (for messages such as "applies to images only (...)")."""
        return tuple(name for name, entry in self._entries.items() if test(entry))
