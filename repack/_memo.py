"""One bounded memory, used wherever repacking remembers what it worked out."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

_Key = TypeVar("_Key", bound=Hashable)
_Value = TypeVar("_Value")


class Memo(dict[_Key, _Value]):
    """A dict that forgets everything once it holds ``limit`` entries.

    What it holds can always be worked out again (a path, a converted value, a
    file known to exist), so forgetting costs a little time, never a wrong
    answer, and a long-running worker's memory stays flat. Thread-safe enough
    for that: a race works a value out twice. Entries go in through :meth:`put`
    (or :meth:`made`), which keeps the limit.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def made(self, key: _Key, make: Callable[[], _Value]) -> _Value:
        """The value remembered for ``key``, else ``make()`` (remembered)."""
        found = self.get(key)
        if found is None:
            found = make()
            self.put(key, found)
        return found

    def put(self, key: _Key, value: _Value) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
