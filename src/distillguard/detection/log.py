"""The event log that detection reads: the store tailed by id.

Detection never takes events from a gateway's memory. It reads the durable log at its
own pace from a position (the id of the last event it observed), so a restart, a crash
or a flood only delays it: what it has not read yet is still in the log.

``StoreLog`` is the log of one machine (the embedded default and single-database
deployments): the store's ``request_events`` table, whose ids grow in commit order in
both stores. At scale the log is NATS JetStream (``detection.jetstream``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distillguard.telemetry.events import RequestEvent
    from distillguard.telemetry.store import Store


class StoreLog:
    """The store's events as a log: positions are event ids (0: before the first)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.last_head = 0

    def read(self, after: int, limit: int) -> list[tuple[int, RequestEvent]]:
        """Up to ``limit`` (position, event) pairs after ``after``, in log order."""
        return self.store.events_after(after, limit)

    def head(self) -> int:
        """The position of the newest event in the log (remembered for ``backlog``)."""
        self.last_head = self.store.last_event_id()
        return self.last_head

    def backlog(self, position: int) -> int:
        """Events after ``position`` as of the last ``head``."""
        return max(0, self.last_head - position)

    def start(self, position: int) -> None:
        """Resume after ``position``: nothing to set up, reads name their position."""

    def committed(self, position: int) -> None:
        """A checkpoint holds everything up to ``position``: the store keeps no cursor."""

    def warmup_start(self, now: float, warmup_s: float, warmup_events: int) -> int:
        """Where a cold start begins reading: the later of ``warmup_s`` seconds before
        ``now`` and ``warmup_events`` events before the head (0: the whole log)."""
        head = self.head()
        by_time = self.store.first_event_id_since(now - warmup_s) - 1 if warmup_s > 0 else 0
        by_count = head - warmup_events if warmup_events > 0 else 0
        return max(0, by_time, by_count)
