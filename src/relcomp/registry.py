"""Named things (rules, composites, methods, planners) resolve through registries.

Every string a user types in a config or on the command line goes through
:class:`Registry.get`, which names the valid choices when it fails.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from relcomp.errors import RelcompError

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(RelcompError, KeyError):
    """A name that no registry entry answers to."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A case-insensitive name → object map with helpful errors.

    Example:
        >>> rules = Registry[int]("LRP rule")
        >>> _ = rules.register("Epsilon")(1)
        >>> rules.get("epsilon")
        1
        >>> rules.get("epsilom")
        Traceback (most recent call last):
        ...
        relcomp.registry.UnknownNameError: unknown LRP rule 'epsilom'; did you mean 'Epsilon'? Valid names: Epsilon
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._display: dict[str, str] = {}

    @staticmethod
    def _key(name: str) -> str:
        return name.strip().lower().replace("_", "-")

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            for alias in (name, *aliases):
                key = self._key(alias)
                if key in self._entries:
                    raise ValueError(f"{self.kind} {alias!r} is registered twice")
                self._entries[key] = obj
            self._display[self._key(name)] = name
            return obj

        return decorator

    def get(self, name: str) -> T:
        key = self._key(name)
        if key in self._entries:
            return self._entries[key]
        valid = ", ".join(sorted(self._display.values()))
        close = difflib.get_close_matches(key, list(self._entries), n=1)
        hint = f"; did you mean {self._display.get(close[0], close[0])!r}?" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} Valid names: {valid}")

    def names(self) -> list[str]:
        return sorted(self._display.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
