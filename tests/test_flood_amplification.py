"""Unauthenticated traffic cannot grow /metrics or the event store without bound."""

from __future__ import annotations

import asyncio
import os

import httpx

from distillguard.backends.echo import EchoBackend


async def test_random_keyless_paths_do_not_grow_metrics_series(harness) -> None:
    async with harness.http() as client:
        for i in range(300):
            response = await client.get(f"/v1/{os.urandom(8).hex()}-{i}")
            assert response.status_code == 401
        page = (await client.get("/metrics")).text
    series = [line for line in page.splitlines() if line and not line.startswith("#")]
    assert len(series) < 60
    assert 'endpoint="unmatched",status="401"} 300' in page


async def test_a_huge_user_agent_is_stored_cut_and_a_401_keeps_no_body(harness) -> None:
    async with harness.http() as client:
        for _ in range(5):
            response = await client.post("/v1/chat/completions",
                                         headers={"User-Agent": "A" * 1_000_000},
                                         json={"model": "x", "messages": []})
            assert response.status_code == 401
    harness.runtime.writer.flush(10)
    events = harness.events()
    assert len(events) == 5  # one event per request, as always
    for event in events:
        assert len(event.user_agent) <= 512 and event.user_agent.startswith("AAAA")
        assert event.params == {} and event.prompt is None


async def test_cost_cap_refuses_n4_by_4096_naming_the_field(harness) -> None:
    key = harness.key()
    headers = {"Authorization": f"Bearer {key}"}
    base = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    async with harness.http() as client:
        big = await client.post("/v1/chat/completions", headers=headers,
                                json={**base, "n": 4, "max_tokens": 4096})
        ok = await client.post("/v1/chat/completions", headers=headers,
                               json={**base, "n": 4, "max_tokens": 1024})
    assert big.status_code == 400
    error = big.json()["error"]
    assert error["param"] == "n" and "4096" in error["message"]
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 4


class GatedBackend(EchoBackend):
    """Echo that holds every request until ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__(model_name="echo")
        self.gate = asyncio.Event()

    async def complete(self, request):
        await self.gate.wait()
        return await super().complete(request)

    async def stream(self, request):
        await self.gate.wait()
        async for item in super().stream(request):
            yield item


async def test_an_account_beyond_its_concurrency_gets_429_others_do_not(
        harness_factory) -> None:
    backend = GatedBackend()
    harness = await harness_factory(backend=backend, max_concurrent_per_account=2)
    greedy, other = harness.key("greedy"), harness.key("other")
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}

    async def call(key: str, stream: bool = False) -> httpx.Response:
        async with harness.http() as client:
            return await client.post("/v1/chat/completions", json={**body, "stream": stream},
                                     headers={"Authorization": f"Bearer {key}"})

    held = [asyncio.ensure_future(call(greedy)), asyncio.ensure_future(call(greedy, True))]
    await asyncio.sleep(0.2)
    refused = await call(greedy)
    other_task = asyncio.ensure_future(call(other))
    await asyncio.sleep(0.1)
    backend.gate.set()
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "too_many_concurrent_requests"
    assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
    assert (await other_task).status_code == 200
    # Slots come back once the responses (the stream's too) are sent.
    assert (await call(greedy)).status_code == 200
    assert harness.runtime.concurrency.in_flight == {}


async def test_concurrent_requests_cannot_overshoot_the_token_budget(harness_factory) -> None:
    backend = GatedBackend()
    harness = await harness_factory(backend=backend, rate_limit_tpm=1000)
    key = harness.key("budgeted")
    body = {"model": "echo", "max_tokens": 400,
            "messages": [{"role": "user", "content": "hi"}]}

    async def call() -> httpx.Response:
        async with harness.http() as client:
            return await client.post("/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {key}"})

    running = [asyncio.ensure_future(call()) for _ in range(2)]
    await asyncio.sleep(0.2)
    refused = await call()  # 3 x 400 would pass 1000 before any token is counted
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    backend.gate.set()
    assert [r.status_code for r in await asyncio.gather(*running)] == [200, 200]
    await asyncio.sleep(0.1)  # settlement runs just after the response
    # Settled to what the echo backend generated, so the budget has room again.
    assert (await call()).status_code == 200
