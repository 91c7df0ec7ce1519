"""One bounded memory, used wherever repacking remembers what it worked out."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

_Key = TypeVar("_Key", bound=Hashable)
_Value = TypeVar("_Value")


class Memo(Generic[_Key, _Value]):
    """A dict that forgets everything once it holds ``limit`` entries.

    What it holds can always be worked out again (a path, a converted value, a
    file known to exist), so forgetting costs a little time, never a wrong
    answer, and a long-running worker's memory stays flat. Thread-safe enough
    for that: a race works a value out twice.
    """

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: dict[_Key, _Value] = {}

    def find(self, key: _Key) -> _Value | None:
        """The value remembered for ``key``, or None."""
        return self._entries.get(key)

    def get(self, key: _Key, make: Callable[[], _Value]) -> _Value:
        """The value remembered for ``key``, else ``make()`` (remembered)."""
        found = self._entries.get(key)
        if found is None:
            found = make()
            self.put(key, found)
        return found

    def put(self, key: _Key, value: _Value) -> None:
        if len(self._entries) >= self.limit:
            self._entries.clear()
        self._entries[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def clear(self) -> None:
        self._entries.clear()
