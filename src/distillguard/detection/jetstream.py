"""The event log at scale: NATS JetStream, partitioned by account.

Gateways publish each event, once the store has committed it, to the subject
``<nats_subject>.<partition>`` of the stream ``nats_stream``, where ``partition`` is
``crc32(account) % detection_partitions``: all of an account's events go to one
partition, in order. Unauthenticated events (no account) are not published; detection
has nothing to attribute them to, and the store still holds them.

"Acknowledged". ``PublishingStore.write_events`` returns only after the store committed
the batch *and* JetStream acknowledged every message of it (a PubAck: the stream has it
on disk). A failure of either raises, and the event writer retries the whole batch: the
store ignores request ids it already has, and JetStream drops repeats of a message id
(``Nats-Msg-Id`` = the request id) within its duplicate window, so a retry neither
loses nor duplicates. While JetStream is down the writer's queue fills and requests wait
for it, as they do when the store is down: detection is never silently bypassed.

Readers. Each partition has one durable pull consumer, ``detect-<partition>``, read by
exactly one ``distillguard detect`` worker at a time: a worker is given its partitions
(``--partitions``), and a replacement started with the same ones (a supervisor's
restart, a StatefulSet ordinal) takes them over. A worker's position in a partition is
the stream sequence of the last message it observed, checkpointed with its state; on
start it re-creates the consumer at the sequence after its checkpoint, so messages the
killed worker had observed but not checkpointed are delivered again, and none it had
checkpointed is counted twice. After each checkpoint it acknowledges everything up to
that position (``AckAll``), which is what ``nats consumer info`` shows as progress.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any

import orjson

from distillguard.telemetry.events import RequestEvent

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.telemetry.store import Store

log = logging.getLogger("distillguard.detection")

_CALL_TIMEOUT = 30.0


def partition_of(account: str, partitions: int) -> int:
    """The partition of an account's events (stable across processes and versions)."""
    return zlib.crc32(account.encode("utf-8")) % partitions


class NatsLink:
    """A NATS connection on an event loop thread of its own, for synchronous callers
    (the event writer's thread, a detect worker's loop)."""

    def __init__(self, url: str, *, name: str = "distillguard") -> None:
        try:
            import nats
        except ImportError:
            from distillguard.config import SettingsError

            raise SettingsError("event_stream = nats needs the package 'nats-py', which is "
                                "not installed (pip install 'distillguard[nats]')") from None

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats",
                                        daemon=True)
        self._thread.start()
        self.nc: Any = self.call(nats.connect(url, name=name, max_reconnect_attempts=-1,
                                              connect_timeout=5))
        self.js: Any = self.nc.jetstream()

    def call(self, coro: Any, timeout: float = _CALL_TIMEOUT) -> Any:
        """Run a coroutine on the link's loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"NATS did not answer within {timeout:.0f} s") from None

    def close(self) -> None:
        """Close the connection (every publish was acknowledged already), stop the loop."""
        try:
            self.call(self.nc.close(), timeout=5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass

        async def settle() -> None:
            # Let the client's reader, pinger and flusher tasks finish their cancellation.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.call(settle(), timeout=5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


async def ensure_stream(js: Any, settings: Settings) -> None:
    """Create the event stream if it does not exist (file storage, ``nats_max_age_hours``)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(settings.nats_stream)
        return
    except NotFoundError:
        pass
    await js.add_stream(StreamConfig(
        name=settings.nats_stream, subjects=[f"{settings.nats_subject}.*"],
        storage=StorageType.FILE, max_age=settings.nats_max_age_hours * 3600.0,
        duplicate_window=120.0))


class PublishingStore:
    """A store whose ``write_events`` also publishes the batch to JetStream, after the
    store has committed it; every other method is the store's own."""

    def __init__(self, store: Store, link: NatsLink, settings: Settings) -> None:
        self._store = store
        self._link = link
        self._subject = settings.nats_subject
        self._partitions = settings.detection_partitions
        self._stream = settings.nats_stream
        link.call(ensure_stream(link.js, settings))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def write_events(self, events: list[RequestEvent]) -> None:
        """Commit to the store, then publish and wait for every PubAck (see the module)."""
        self._store.write_events(events)
        self._link.call(self._publish(events))

    async def _publish(self, events: list[RequestEvent]) -> None:
        futures = []
        for event in events:
            if event.account is None:
                continue
            subject = f"{self._subject}.{partition_of(event.account, self._partitions)}"
            futures.append(await self._link.js.publish_async(
                subject, orjson.dumps(event.to_dict(), option=orjson.OPT_NON_STR_KEYS),
                headers={"Nats-Msg-Id": event.request_id}, stream=self._stream))
        if futures:
            await asyncio.wait_for(asyncio.gather(*futures), _CALL_TIMEOUT)


class JetStreamPartitionLog:
    """One partition of the event stream as a log: positions are stream sequences."""

    def __init__(self, link: NatsLink, settings: Settings, partition: int) -> None:
        self.link = link
        self.settings = settings
        self.partition = partition
        self.stream = settings.nats_stream
        self.durable = f"detect-{partition}"
        self.subject = f"{settings.nats_subject}.{partition}"
        self._sub: Any = None
        self._last_msg: Any = None
        self._pending = 0
        link.call(ensure_stream(link.js, settings))

    def _open(self, start_seq: int | None, start_time: float | None) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        async def open_() -> Any:
            try:
                await self.link.js.delete_consumer(self.stream, self.durable)
            except NotFoundError:
                pass
            config = ConsumerConfig(durable_name=self.durable, filter_subject=self.subject,
                                    ack_policy=AckPolicy.ALL, ack_wait=300.0,
                                    max_ack_pending=-1)
            if start_seq is not None:
                config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = start_seq
            elif start_time is not None:
                import datetime

                config.deliver_policy = DeliverPolicy.BY_START_TIME
                config.opt_start_time = datetime.datetime.fromtimestamp(
                    start_time, datetime.UTC).isoformat().replace("+00:00", "Z")
            else:
                config.deliver_policy = DeliverPolicy.ALL
            await self.link.js.add_consumer(self.stream, config)
            return await self.link.js.pull_subscribe_bind(self.durable, self.stream)

        self._sub = self.link.call(open_())

    def start(self, position: int) -> None:
        """Read from just after ``position`` (a checkpoint's stream sequence)."""
        self._open(position + 1, None)

    def warmup_start(self, now: float, warmup_s: float, warmup_events: int) -> int:
        """Cold start: read the partition's last ``warmup_s`` seconds (JetStream has no
        cheap "N messages back" for one subject, so only the time bound applies)."""
        self._open(None, now - warmup_s if warmup_s > 0 else None)
        return 0

    def read(self, after: int, limit: int) -> list[tuple[int, RequestEvent]]:
        """Up to ``limit`` (sequence, event) pairs after ``after``; [] when none arrive
        within a tenth of a second."""
        from nats.errors import TimeoutError as NatsTimeout

        async def fetch() -> list[Any]:
            try:
                return await self._sub.fetch(limit, timeout=0.1)
            except (TimeoutError, NatsTimeout):
                return []

        out = []
        for msg in self.link.call(fetch()):
            meta = msg.metadata
            self._pending = meta.num_pending
            self._last_msg = msg
            seq = meta.sequence.stream
            if seq <= after:
                continue  # observed before the last checkpoint: never count it twice
            out.append((seq, RequestEvent.from_dict(orjson.loads(msg.data))))
        if not out and self._last_msg is None:
            self._pending = 0
        return out

    def head(self) -> int:
        """-1: JetStream tells the backlog directly (``backlog``), not as a sequence."""
        return -1

    def backlog(self, position: int) -> int:
        """Messages of this partition not yet delivered to the worker."""
        return self._pending

    def committed(self, position: int) -> None:
        """The checkpoint now holds everything up to ``position``: acknowledge it."""
        msg = self._last_msg
        if msg is not None and msg.metadata.sequence.stream <= position:
            self.link.call(msg.ack())
            self._last_msg = None


def wait_for_stream(url: str, timeout: float = 10.0) -> bool:
    """Whether a NATS server with JetStream answers at ``url`` within ``timeout``."""
    import nats

    async def probe() -> bool:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0,
                                allow_reconnect=False)
        try:
            await nc.jetstream().account_info()
            return True
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return asyncio.run(probe())
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    return False
