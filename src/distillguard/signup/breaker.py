"""The sign-up circuit breaker: waitlist mode when sign-ups run far above their usual rate.

The model. Screened attempts (those that carried a valid puzzle) are counted per clock
hour. The learned rate ``r`` (attempts per hour) is an exponentially weighted moving
average of those hourly counts with weight ``1/24`` per hour (a memory of about a day),
floored at ``signup_breaker_min_rate`` so that a quiet or new deployment does not trip on
its first few sign-ups. Each hourly count is capped at ``3 r + floor`` before it is
learned, and hours spent tripped are not learned at all, so that a burst cannot teach the
breaker that bursts are normal.

The test. With ``n`` attempts in the last ``signup_breaker_window`` seconds ``w`` (or
since an admin reopened, if later), and ``N ~ Poisson(r w / 3600)`` what the learned rate
predicts, the breaker trips when ``n >= 10`` and ``P(N >= n) < signup_breaker_p``.
Tripped, it stays tripped until an admin reopens; reopening starts the window afresh.

``pressure`` (``n`` against the expected count) also sets the puzzle level: each doubling
of the rate above the learned one adds a level.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import orjson
from scipy.special import pdtrc

from distillguard.signup.store import SignupStore

log = logging.getLogger("distillguard.signup")

HOUR = 3600.0
ALPHA = 1.0 / 24.0
MIN_COUNT = 10
_MAX_FOLD = 24 * 7  # hours learned at most after a long pause (older ones weigh ~0)
_STATE = "breaker"


@dataclasses.dataclass
class BreakerState:
    """What the breaker has learned and whether it is tripped."""

    rate: float
    hour: int  # last clock hour folded into ``rate``
    tripped_at: float | None = None
    reason: str = ""
    reopened_at: float | None = None
    reopened_by: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Breaker:
    """Learns the hourly sign-up rate from the store and trips on a Poisson tail test."""

    def __init__(self, store: SignupStore, *, min_rate: float, window: float, p: float,
                 enabled: bool = True, on_change: Callable[[BreakerState], None] | None = None
                 ) -> None:
        self.store = store
        self.min_rate = min_rate
        self.window = window
        self.p = p
        self.enabled = enabled
        self.on_change = on_change

    def state(self, now: float) -> BreakerState:
        raw = self.store.get_state(_STATE)
        if raw is None:
            return BreakerState(rate=self.min_rate, hour=int(now // HOUR) - 1)
        return BreakerState(**orjson.loads(raw))

    def _save(self, state: BreakerState) -> None:
        self.store.put_state(_STATE, orjson.dumps(state.to_dict()).decode())

    def _learn(self, state: BreakerState, now: float) -> bool:
        current = int(now // HOUR)
        if state.hour >= current - 1:
            return False
        start = max(state.hour + 1, current - _MAX_FOLD)
        for hour in range(start, current):
            if state.tripped_at is not None and state.tripped_at < (hour + 1) * HOUR:
                continue  # a tripped hour teaches nothing
            count = self.store.count(hour * HOUR, (hour + 1) * HOUR)
            capped = min(float(count), 3.0 * state.rate + self.min_rate)
            state.rate = max(self.min_rate, (1 - ALPHA) * state.rate + ALPHA * capped)
        state.hour = current - 1
        return True

    def _window(self, state: BreakerState, now: float) -> tuple[int, float]:
        since = now - self.window
        if state.reopened_at is not None:
            since = max(since, state.reopened_at)
        span = max(now - since, 1.0)
        return self.store.count(since), max(state.rate, self.min_rate) * span / HOUR

    def pressure(self, now: float) -> float:
        """Recent attempts over what the learned rate expects (1.0: as usual)."""
        state = self.state(now)
        n, expected = self._window(state, now)
        return n / expected if expected > 0 else float(n)

    def level(self, now: float) -> int:
        """Puzzle levels added by sign-up pressure: one per doubling above the usual."""
        pressure = self.pressure(now)
        return int(math.floor(math.log2(pressure))) if pressure >= 2.0 else 0

    def check(self, now: float) -> bool:
        """Learn, test and trip if warranted; whether the breaker is tripped now."""
        fresh = self.store.get_state(_STATE) is None
        state = self.state(now)
        changed = self._learn(state, now) or fresh
        if state.tripped_at is None and self.enabled:
            n, expected = self._window(state, now)
            tail = float(pdtrc(n - 1, expected)) if n > 0 else 1.0
            if n >= MIN_COUNT and tail < self.p:
                state.tripped_at = now
                state.reason = (f"{n} sign-up attempts in {self.window:.0f} s where the "
                                f"learned rate {state.rate:.1f}/h expects {expected:.1f} "
                                f"(Poisson tail P = {tail:.1e} < {self.p:g})")
                changed = True
                log.warning("sign-up circuit breaker tripped: %s; sign-up is in waitlist "
                            "mode until an admin reopens it", state.reason)
                self._save(state)
                if self.on_change is not None:
                    self.on_change(state)
                return True
        if changed:
            self._save(state)
        return state.tripped_at is not None

    def reopen(self, now: float, *, author: str) -> BreakerState:
        """Close the breaker again (sign-up back to its configured mode)."""
        state = self.state(now)
        state.tripped_at = None
        state.reason = ""
        state.reopened_at = now
        state.reopened_by = author
        self._save(state)
        log.warning("sign-up circuit breaker reopened by %s", author)
        if self.on_change is not None:
            self.on_change(state)
        return state
