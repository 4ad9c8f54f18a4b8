"""Clocks: the one notion of "now" that the runtime, detection and policy share.

Production uses ``wall_clock``. The simulator and tests inject a ``ManualClock`` whose
time they set, so that the production admission and event code run on simulated time
without any simulation flag in the request path.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A callable returning the current time in seconds since the epoch."""

    def __call__(self) -> float: ...


def wall_clock() -> float:
    """The wall clock (``time.time``)."""
    return time.time()


class ManualClock:
    """A clock that only moves when told to, and never backwards.

    Requests of one simulated instant may arrive out of order, so ``advance`` ignores a
    time earlier than the current one.
    """

    def __init__(self, now: float) -> None:
        self.now = float(now)

    def advance(self, ts: float) -> float:
        """Move forward to ``ts`` (never back); returns the clock's time."""
        if ts > self.now:
            self.now = float(ts)
        return self.now

    def set(self, ts: float) -> None:
        """Set the time, also backwards (replay steps through requests in order)."""
        self.now = float(ts)

    def __call__(self) -> float:
        return self.now
