"""repack._memo: the one bounded memory (forgets everything at its limit, never answers wrong)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from repack._memo import Memo


def test_made_makes_a_value_once_and_remembers_it() -> None:
    memo: Memo[str, list[int]] = Memo(4)
    made: list[str] = []

    def make(key: str) -> list[int]:
        made.append(key)
        return [len(made)]

    first = memo.made("a", lambda: make("a"))
    assert memo.made("a", lambda: make("a")) is first
    assert made == ["a"]
    assert "a" in memo
    assert memo.get("a") is first
    assert memo.get("b") is None


def test_it_forgets_everything_at_its_limit_then_remembers_again() -> None:
    memo: Memo[int, str] = Memo(3)
    for key in range(3):
        memo.put(key, str(key))
    assert all(key in memo for key in range(3))
    memo.put(3, "3")  # the fourth entry: the first three are forgotten
    assert [key in memo for key in range(4)] == [False, False, False, True]
    memo.clear()
    assert 3 not in memo


@given(st.lists(st.tuples(st.integers(0, 20), st.integers()), max_size=200), st.integers(1, 8))
def test_it_never_holds_more_than_its_limit_nor_a_wrong_value(
    puts: list[tuple[int, int]], limit: int
) -> None:
    memo: Memo[int, int] = Memo(limit)
    latest: dict[int, int] = {}
    for key, value in puts:
        memo.put(key, value)
        latest[key] = value
        assert len(memo) <= limit
    for key, value in latest.items():
        found = memo.get(key)
        assert found is None or found == value
