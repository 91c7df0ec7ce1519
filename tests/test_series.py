"""watcher._series: when a series is complete, counted by instance."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from repack import Repacked
from watcher._series import SeriesTracker

from .helpers import Clock


def _repacked(sop: str) -> Repacked:
    """An instance ``sop`` of series S, repacked."""
    dst = Path("/data/x", f"{sop}.dcm")
    return Repacked(Path("/in", sop), dst, 1, "P", "T", "S", sop, dst.parent)


def test_a_series_goes_quiet_and_counts_each_instance_once() -> None:
    clock = Clock()
    series = SeriesTracker(30, clock=clock)
    for sop in ("1", "2", "3", "2"):  # "2" is sent again
        series.add(_repacked(sop))
        clock.now += 1
    assert series.take_quiet() == []
    clock.now += 28
    assert series.take_quiet() == []  # 29 s after the last: not yet
    clock.now += 1
    (quiet,) = series.take_quiet()
    assert (quiet.instances, quiet.resends, quiet.receive_s) == (3, 1, 3.0)
    assert series.take_quiet() == []  # announced once


@given(st.lists(st.sampled_from([f"1.2.{n}" for n in range(40)]), max_size=200))
def test_a_series_counts_distinct_instances_and_every_resend(sops: list[str]) -> None:
    series = SeriesTracker(0, clock=Clock())
    for sop in sops:
        series.add(_repacked(sop))
    quiet = series.take_quiet()
    if not sops:
        assert quiet == []
        return
    (only,) = quiet
    assert only.instances == len(set(sops))
    assert only.resends == len(sops) - len(set(sops))
