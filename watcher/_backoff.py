"""One retry policy for everything the service tries again (files, outbox records, storescp)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """A retry policy, stated as kombu states one: the first wait, the factor each further
    failure multiplies it by, its cap, and after how many failures in a row a failure is
    reported stuck (an error, once, rather than another warning)."""

    start: float
    factor: float = 2.0
    cap: float = 300.0
    stuck_after: int = 5

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row (1 for the first)."""
        return min(self.cap, self.start * self.factor ** min(max(failures, 1) - 1, 64))

    def stuck(self, failures: int) -> bool:
        """Whether this failure is the one to report as stuck."""
        return failures == self.stuck_after


#: A file that could not be repacked for a reason that may pass (a full disk, say):
#: 0.5 s, doubling, capped by ``--retry-max-delay``.
FILE_RETRY = Backoff(start=0.5)
#: An outbox record its destination did not take: 1 s, doubling, up to 5 minutes.
HANDOFF_RETRY = Backoff(start=1.0)
#: A supervised storescp that exited: 1 s, doubling, up to 30 s (afresh after a minute's run).
STORESCP_RESTART = Backoff(start=1.0, cap=30.0)
