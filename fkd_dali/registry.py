"""A tiny name -> entry registry, the one place where named choices are looked up.

Unknown names raise `ConfigError` listing the valid names and the closest match, so
no caller writes its own if/elif over strings.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from fkd_dali.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries (functions, classes or frozen info records)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds an entry under `name` (names are unique)."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def add(self, name: str, entry: T) -> T:
        return self.register(name)(entry)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}.{hint}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
