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

    def read(self, after: int, limit: int) -> list[tuple[int, RequestEvent]]:
        """Up to ``limit`` (position, event) pairs after ``after``, in log order."""
        return self.store.events_after(after, limit)

    def head(self) -> int:
        """The position of the newest event in the log."""
        return self.store.last_event_id()

    def warmup_start(self, now: float, warmup_s: float, warmup_events: int) -> int:
        """Where a cold start begins reading: the later of ``warmup_s`` seconds before
        ``now`` and ``warmup_events`` events before the head (0: the whole log)."""
        head = self.head()
        by_time = self.store.first_event_id_since(now - warmup_s) - 1 if warmup_s > 0 else 0
        by_count = head - warmup_events if warmup_events > 0 else 0
        return max(0, by_time, by_count)
