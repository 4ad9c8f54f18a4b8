"""``Action``: what policy does to an account, and ``Decision``: what admission answers."""

from __future__ import annotations

import dataclasses
from typing import Any

# Most severe first: when several rules match, the most severe action wins.
KINDS = ("block", "challenge", "throttle", "degrade", "allow")
SEVERITY = {k: len(KINDS) - i for i, k in enumerate(KINDS)}


@dataclasses.dataclass(frozen=True)
class Action:
    """An action on an account.

    ``kind``: ``allow`` (an analyst's exemption: rules leave the account alone while it
    lasts), ``throttle`` (requests per minute times ``rate_factor``), ``challenge`` (key
    suspended until an analyst re-verifies the account), ``degrade`` (reasoning traces
    stripped, stronger watermark), ``block``. ``author`` is ``rule:NAME`` or
    ``analyst:NAME``. ``expires_at`` is None for an action without time to live.
    """

    account: str
    kind: str
    reason: str
    author: str
    created_at: float
    expires_at: float | None = None
    rate_factor: float | None = None

    @property
    def ttl(self) -> float | None:
        """Seconds the action lives from creation (None: until lifted)."""
        return None if self.expires_at is None else self.expires_at - self.created_at

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ttl": self.ttl}


def check_action(kind: str, rate_factor: float | None) -> None:
    """ValueError naming the problem when ``kind``/``rate_factor`` do not fit together."""
    if kind not in KINDS:
        raise ValueError(f"unknown action kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "throttle":
        if rate_factor is None or not 0 < rate_factor < 1:
            raise ValueError("a throttle action needs rate_factor strictly between 0 and 1")
    elif rate_factor is not None:
        raise ValueError(f"rate_factor applies only to throttle, not {kind}")


@dataclasses.dataclass(frozen=True)
class Decision:
    """Admission's answer for one request of an account.

    ``allowed`` False: refuse with ``action.kind`` (block / challenge: 403; throttle: 429
    with ``retry_after`` seconds). ``action`` is the account's current action, if any
    (``degrade`` is allowed and tells the gateway to degrade the output).
    """

    allowed: bool
    retry_after: float | None = None
    reason: str | None = None
    action: Action | None = None
