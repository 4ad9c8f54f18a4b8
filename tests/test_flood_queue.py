"""The local backend's fair, bounded queue: refusals, shedding order, fair share."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from distillguard.backends.base import BackendError, GenerationRequest, StreamEnd
from distillguard.backends.local import LocalBackend, create_tiny_model
from distillguard.backends.scheduler import FairQueue


class FakeJob:
    def __init__(self, account: str, priority: int = 0, n: int = 1) -> None:
        self.request = GenerationRequest(kind="completion", model="m", max_tokens=8,
                                         prompt="x", n=n, account=account,
                                         priority=priority)
        self.error: BackendError | None = None
        self.gone = False

    @property
    def closed(self) -> bool:
        return self.gone or self.error is not None

    def fail(self, error: BackendError) -> None:
        self.error = error


def test_an_account_beyond_its_share_gets_429_with_retry_after() -> None:
    q = FairQueue(capacity=10, per_account=2, rows=4)
    q.offer(FakeJob("a"))
    q.offer(FakeJob("a"))
    with pytest.raises(BackendError) as info:
        q.offer(FakeJob("a"))
    assert info.value.status == 429 and info.value.retry_after >= 1
    q.offer(FakeJob("b"))  # another account still gets in
    assert len(q) == 3 and q.shed_account == 1


def test_full_queue_sheds_the_newest_of_the_least_established() -> None:
    q = FairQueue(capacity=3, per_account=3, rows=4)
    old, young = FakeJob("sybil1"), FakeJob("sybil1")
    q.offer(old)
    q.offer(young)
    q.offer(FakeJob("sybil2"))
    with pytest.raises(BackendError) as info:
        q.offer(FakeJob("sybil3"))  # same rank as everyone waiting: refused itself
    assert info.value.status == 503 and info.value.retry_after >= 1
    established = FakeJob("old-customer", priority=1)
    q.offer(established)  # outranks them: the newest from the busiest account goes
    assert young.error is not None and young.error.status == 503
    assert old.error is None and len(q) == 3


def test_free_rows_go_to_accounts_with_fewest_running_then_established_first() -> None:
    q = FairQueue(capacity=20, per_account=10, rows=4)
    flood = [FakeJob("flood") for _ in range(5)]
    for job in flood:
        q.offer(job)
    other = FakeJob("quiet")
    established = FakeJob("customer", priority=1)
    q.offer(other)
    q.offer(established)
    # "flood" already holds 3 rows of the batch: the two others go first, the
    # established one ahead of the equally idle newcomer.
    taken = q.take(2, {"flood": 3}, busy=True)
    assert taken == [established, other]
    assert q.take(2, {"flood": 3}, busy=True) == flood[:2]


def test_closed_jobs_do_not_hold_a_share() -> None:
    q = FairQueue(capacity=10, per_account=1, rows=4)
    job = FakeJob("a")
    q.offer(job)
    job.gone = True
    q.offer(FakeJob("a"))  # the departed one no longer counts
    assert len(q) == 1


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


async def test_another_accounts_small_request_is_served_through_a_flood(
        tiny_model_path: Path) -> None:
    backend = LocalBackend(tiny_model_path, model_name="tiny", max_batch=4, threads=1,
                           queue_size=12, queue_per_account=3)
    await backend.start()
    try:
        async def one(account: str, max_tokens: int, priority: int = 0) -> tuple[str, float]:
            request = GenerationRequest(kind="completion", model="tiny", prompt="Once",
                                        max_tokens=max_tokens, temperature=0,
                                        account=account, priority=priority)
            started = time.perf_counter()
            try:
                async for item in backend.stream(request):
                    if isinstance(item, StreamEnd):
                        assert request.usage.completion_tokens == item.completion_tokens
            except BackendError as exc:
                return f"shed {exc.status}", time.perf_counter() - started
            return "served", time.perf_counter() - started

        # 10 flood accounts x 4 long streams into 4 rows and 12 waiting places.
        flood = [asyncio.ensure_future(one(f"f{i}", 200)) for i in range(10) for _ in range(4)]
        await asyncio.sleep(0.3)
        outcome, waited = await one("customer", 4, priority=1)
        results = await asyncio.gather(*flood)
        gauges = {name: value for name, _, _, value in backend.gauges()}
    finally:
        await backend.close()
    kinds = [r[0] for r in results]
    assert outcome == "served"
    # /metrics shows the shed counts the clients saw, and an idle batch once done.
    assert gauges["distillguard_local_shed_account_total"] == kinds.count("shed 429")
    assert gauges["distillguard_local_shed_overloaded_total"] == kinds.count("shed 503")
    assert gauges["distillguard_local_queue_waiting"] == 0
    # Each account's streams beyond its share, and those beyond the queue's capacity,
    # were refused at once instead of waiting.
    assert "shed 429" in kinds and "shed 503" in kinds
    assert kinds.count("served") <= 4 + 12
    # The customer waited for one batch slot, not behind the 16 flood requests queued.
    served = sorted(t for k, t in results if k == "served")
    assert waited < served[len(served) // 2]


def _events(gateway, count: int) -> list:
    """The gateway's events once ``count`` are stored (a request's event is queued just
    after its connection is done with)."""
    deadline = time.monotonic() + 10
    while True:
        assert gateway.writer.flush(10)
        events = list(gateway.store.iter_events())
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def test_a_client_that_leaves_stops_generation_and_pays_for_what_was_made(
        tiny_model_path: Path, live_server) -> None:
    backend = LocalBackend(tiny_model_path, model_name="tiny", max_batch=4, threads=1)
    url, gateway = live_server(backend=backend, detection=False)
    _, key = gateway.store.create_key("leaver")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "tiny", "prompt": "Once", "max_tokens": 2000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=0.5)
    # Its rows leave the batch at once instead of running to 2000 tokens.
    deadline = time.monotonic() + 5
    while backend._batcher.rows and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend._batcher.rows == 0
    # A stream read for a few chunks and closed.
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True},
                      headers=headers, timeout=10) as response:
        lines = response.iter_lines()
        received = sum(1 for _, line in zip(range(12), lines, strict=False) if line)
    abandoned, streamed = _events(gateway, 2)[-2:]
    assert abandoned.status == 499
    assert 0 < abandoned.completion_tokens < 1500
    assert streamed.completion_tokens >= received > 0


def test_reserved_rows_wait_for_established_accounts() -> None:
    q = FairQueue(capacity=20, per_account=10, rows=8, reserved=2)
    flood = [FakeJob("flood") for _ in range(3)]
    for job in flood:
        q.offer(job)
    # Two rows free, both reserved: the flood waits even though the batch has room.
    assert q.take(2, {"flood": 6}, busy=True) == []
    established = FakeJob("customer", priority=1)
    q.offer(established)
    assert q.take(2, {"flood": 6}, busy=True) == [established]


def test_take_admits_at_most_limit_jobs_per_step() -> None:
    q = FairQueue(capacity=20, per_account=10, rows=16)
    jobs = [FakeJob(f"a{i}") for i in range(6)]
    for job in jobs:
        q.offer(job)
    assert q.take(16, {}, busy=True, limit=4) == jobs[:4]
    assert q.take(16, {}, busy=True, limit=4) == jobs[4:]


async def test_an_established_request_is_prefilled_on_its_own_before_the_flood(
        tiny_model_path: Path) -> None:
    backend = LocalBackend(tiny_model_path, model_name="tiny", max_batch=8, threads=1,
                           queue_size=16, queue_per_account=8, reserved_rows=0,
                           admit_per_step=0)
    await backend.start()
    groups: list[list[str]] = []
    batcher = backend._batcher
    assert batcher is not None
    admit = batcher.admit

    def recording(jobs):
        groups.append([job.request.account for job in jobs])
        return admit(jobs)

    batcher.admit = recording  # type: ignore[method-assign]
    take = backend.waiting.take

    def all_at_once(*args, **kwargs):
        # The worker's first take sees all six requests waiting.
        deadline = time.monotonic() + 10
        while len(backend.waiting) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        return take(*args, **kwargs)

    backend.waiting.take = all_at_once  # type: ignore[method-assign]
    try:
        async def one(account: str, priority: int = 0) -> None:
            request = GenerationRequest(kind="completion", model="tiny", prompt="Once",
                                        max_tokens=3, temperature=0, account=account,
                                        priority=priority)
            async for _ in backend.stream(request):
                pass

        await asyncio.gather(*[one(f"f{i}") for i in range(5)], one("customer", 1))
    finally:
        await backend.close()
    # One take, two prefills: the established request's alone, then the flood's.
    assert groups == [["customer"], [f"f{i}" for i in range(5)]]
