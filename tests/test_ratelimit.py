"""Rate limits: the same behaviour from the memory store and the Redis store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from distillguard.config import Settings, SettingsError
from distillguard.policy.ratelimit import (
    RATE_STORES,
    MemoryRateStore,
    RateLimiter,
    RateStore,
    RedisRateStore,
    open_rate_store,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


class Clock:
    """A hand-moved clock, starting at an arbitrary instant."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _redis_reachable() -> bool:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.from_url(REDIS_URL, socket_connect_timeout=0.5)
    try:
        return bool(await client.ping())
    except (OSError, redis_asyncio.RedisError):
        return False
    finally:
        await client.aclose()


StoreFactory = Callable[..., RateStore]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_store(request) -> AsyncIterator[StoreFactory]:
    """Factory of stores sharing one backing state (one Redis prefix per test)."""
    prefix = f"dgtest:{uuid.uuid4().hex}"
    made: list[RateStore] = []
    if request.param == "redis" and not await _redis_reachable():
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    memory: dict[int, MemoryRateStore] = {}

    def make(clock: Clock | None = None) -> RateStore:
        if request.param == "memory":
            # Replicas of a memory store would not share state; one instance per clock.
            key = id(clock)
            if key not in memory:
                memory[key] = MemoryRateStore(clock=clock) if clock else MemoryRateStore()
            return memory[key]
        store = RedisRateStore(REDIS_URL, prefix=prefix, clock=clock)
        made.append(store)
        return store

    yield make
    if made:
        client = made[0]._redis
        keys = [k async for k in client.scan_iter(match=f"{{{prefix}:*")]
        if keys:
            await client.delete(*keys)
    for store in made:
        await store.close()


async def test_rpm_refuses_then_frees_exactly_one_window_after(make_store):
    clock = Clock()
    limiter = RateLimiter(make_store(clock), rpm=3, tpm=0)
    assert (await limiter.check("k")).allowed
    clock.now += 10
    assert (await limiter.check("k")).allowed
    assert (await limiter.check("k")).allowed
    clock.now += 5
    refused = await limiter.check("k")
    assert not refused.allowed
    assert refused.limit == "rpm"
    assert "3 requests per minute" in refused.reason
    assert refused.retry_after == pytest.approx(45.0)  # first request leaves at +60
    clock.now += 44.9
    assert not (await limiter.check("k")).allowed
    clock.now += 0.1
    assert (await limiter.check("k")).allowed


async def test_window_slides_rather_than_resets(make_store):
    clock = Clock()
    limiter = RateLimiter(make_store(clock), rpm=3, tpm=0)
    for step in (0, 30, 29):  # requests at t=0, 30, 59
        clock.now += step
        assert (await limiter.check("k")).allowed
    clock.now = 1_060.0  # the t=0 request has left; t=30 and t=59 remain
    assert (await limiter.check("k")).allowed
    clock.now = 1_061.0
    refused = await limiter.check("k")
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(29.0)  # the t=30 request leaves at t=90


async def test_refused_requests_are_not_counted(make_store):
    clock = Clock()
    limiter = RateLimiter(make_store(clock), rpm=1, tpm=0)
    assert (await limiter.check("k")).allowed
    for _ in range(5):
        clock.now += 1
        assert not (await limiter.check("k")).allowed
    clock.now = 1_060.0
    assert (await limiter.check("k")).allowed
    assert not (await limiter.check("k")).allowed


async def test_tpm_refuses_the_next_request_until_tokens_leave(make_store):
    clock = Clock()
    limiter = RateLimiter(make_store(clock), rpm=0, tpm=100)
    assert (await limiter.check("k")).allowed
    await limiter.add_tokens("k", 80)
    clock.now += 10
    assert (await limiter.check("k")).allowed  # 80 < 100: still under budget
    await limiter.add_tokens("k", 30)  # 110: over budget from now on
    clock.now += 10
    refused = await limiter.check("k")
    assert not refused.allowed
    assert refused.limit == "tpm"
    assert "100 tokens per minute" in refused.reason
    # At t=60 the 80 tokens leave and 30 < 100 remain.
    assert refused.retry_after == pytest.approx(40.0)
    clock.now = 1_060.0
    assert (await limiter.check("k")).allowed


async def test_keys_are_independent(make_store):
    clock = Clock()
    limiter = RateLimiter(make_store(clock), rpm=1, tpm=10)
    assert (await limiter.check("a")).allowed
    assert not (await limiter.check("a")).allowed
    assert (await limiter.check("b")).allowed
    await limiter.add_tokens("c", 50)
    assert not (await limiter.check("c")).allowed
    assert (await limiter.check("d")).allowed


async def test_per_call_override_throttles_one_key(make_store):
    clock = Clock()
    limiter = RateLimiter(make_store(clock), rpm=100, tpm=0)
    assert (await limiter.check("k", rpm=1)).allowed
    assert not (await limiter.check("k", rpm=1)).allowed
    assert (await limiter.check("k")).allowed


async def test_concurrent_checks_admit_exactly_the_limit(make_store):
    clock = Clock()
    # Two store objects: two gateway replicas for Redis, the same object for memory.
    limiters = [RateLimiter(make_store(clock), rpm=10, tpm=0) for _ in range(2)]
    decisions = await asyncio.gather(*(limiters[i % 2].check("k") for i in range(30)))
    assert sum(d.allowed for d in decisions) == 10


async def test_default_clock_counts_real_time(make_store):
    limiter = RateLimiter(make_store(), rpm=2, tpm=0)
    assert (await limiter.check("k")).allowed
    assert (await limiter.check("k")).allowed
    refused = await limiter.check("k")
    assert not refused.allowed
    assert 59.0 < refused.retry_after <= 60.0


async def test_no_limits_never_touch_the_store():
    class Exploding:
        async def admit(self, *args, **kwargs):
            raise AssertionError("store used")

        async def add_tokens(self, *args, **kwargs):
            raise AssertionError("store used")

        async def close(self) -> None:
            pass

    limiter = RateLimiter(Exploding(), rpm=0, tpm=0)  # type: ignore[arg-type]
    for _ in range(100):
        assert (await limiter.check("k")).allowed
    await limiter.add_tokens("k", 10_000)


async def test_memory_store_forgets_idle_keys():
    clock = Clock()
    store = MemoryRateStore(clock=clock)
    store._SWEEP_EVERY = 10
    limiter = RateLimiter(store, rpm=5, tpm=50)
    for i in range(9):
        await limiter.check(f"one-off-{i}")
        await limiter.add_tokens(f"one-off-{i}", 3)
    clock.now += 61
    await limiter.check("late")  # the 10th operation sweeps
    assert set(store._requests) == {"late"}
    assert store._tokens == {}


async def test_every_registered_store_builds_from_settings():
    settings = Settings.load(env={})
    assert settings.rate_store == "memory"
    assert settings.redis_url.reveal() == REDIS_URL
    for name in RATE_STORES:
        store = open_rate_store(settings.replace(rate_store=name))
        assert isinstance(store, RateStore)
        await store.close()
    with pytest.raises(SettingsError, match="rate_store"):
        open_rate_store(settings.replace(rate_store="etcd"))
    limiter = RateLimiter.from_settings(settings.replace(rate_limit_rpm=7))
    assert (limiter.rpm, limiter.tpm) == (7, 0)


async def test_reservations_stop_concurrent_requests_overshooting_then_settle(make_store):
    clock = Clock()
    limiter = RateLimiter(make_store(clock), rpm=0, tpm=1000)
    first, held = await limiter.reserve("k", 400)
    second, held2 = await limiter.reserve("k", 400)
    third, _ = await limiter.reserve("k", 400)  # 1200 > 1000: refused before generating
    assert first.allowed and second.allowed and not third.allowed
    assert third.limit == "tpm" and third.retry_after == pytest.approx(60.0)
    # The first generated 50 tokens, the second one (its client left) 120.
    await limiter.settle(held, 50)
    await limiter.settle(held2, 120)
    clock.now += 1
    assert (await limiter.reserve("k", 800))[0].allowed  # 50 + 120 + 800 <= 1000
    refused, _ = await limiter.reserve("k", 100)
    assert not refused.allowed and refused.retry_after == pytest.approx(59.0)


async def test_a_reservation_larger_than_the_budget_runs_alone(make_store):
    clock = Clock()
    limiter = RateLimiter(make_store(clock), rpm=0, tpm=500)
    decision, held = await limiter.reserve("k", 5000)
    assert decision.allowed and held.tokens == 500
    assert not (await limiter.reserve("k", 1))[0].allowed
    await limiter.settle(held, 30)
    assert (await limiter.reserve("k", 400))[0].allowed
