"""Live mode: real HTTP through a gateway in simulation mode, with the official SDK.

The gateway is built in-process with ``build_app(..., simulation=True)`` (a keyword, not
a setting: no configuration can enable it) and served by uvicorn on 127.0.0.1. Every
simulated account gets its own API key and ``openai.AsyncOpenAI`` client; requests go
out concurrently with their client address in ``X-Forwarded-For``, their user agent,
and their simulated arrival time in ``X-Distillguard-Sim-Time``. ``SimulatedBackend``
answers instantly with the same answer lengths replay assumes. At the end of each
simulated detection interval the simulator waits for the interval's responses, then asks
the gateway for one detection round (``Gateway.simulation_round``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import time
from typing import Any

from distillguard.backends.base import FinishReason, GenerationRequest
from distillguard.backends.echo import EchoBackend
from distillguard.config import Settings
from distillguard.simulate.runner import (
    Progress,
    Recorder,
    Traffic,
    run_settings,
    write_policy_file,
)
from distillguard.simulate.traffic import SimRequest, answer_tokens
from distillguard.testing.server import serve_in_thread


class SimulatedBackend(EchoBackend):
    """The echo backend serving the scenario's models, answering with ``answer_tokens``
    words (the length model replay uses) instead of a fixed count."""

    def __init__(self, models: list[str]) -> None:
        super().__init__(model_name=models[0])
        self._models = list(models)

    def models(self) -> list[str]:
        """Every model of the scenario."""
        return list(self._models)

    def _answer(self, source: list[str], index: int,
                request: GenerationRequest) -> tuple[list[str], FinishReason]:
        count = answer_tokens(" ".join(source), request.max_tokens)
        finish: FinishReason = "length" if count >= request.max_tokens else "stop"
        return [source[(index + k) % len(source)] for k in range(count)], finish


class SimKeyStore:
    """The gateway's store, except that ``list_keys`` reports simulated key creation
    times (keys are really created when the run starts, all within a second)."""

    def __init__(self, store: Any, created: dict[str, float]) -> None:
        self._store = store
        self._created = created

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def list_keys(self, account: str | None = None) -> list[Any]:
        return [dataclasses.replace(r, created_at=self._created.get(r.account, r.created_at))
                for r in self._store.list_keys(account)]


class LiveRun:
    """One scenario run through a real gateway; ``run()`` returns the ``Recorder``."""

    def __init__(self, traffic: Traffic, *, embeddings: bool | None = False,
                 base_settings: Settings | None = None, concurrency: int = 32,
                 progress: bool = True) -> None:
        self.traffic = traffic
        self._tmp = tempfile.TemporaryDirectory(prefix="dg-sim-live-")
        folder = self._tmp.name
        scenario = traffic.scenario
        self.settings: Settings = run_settings(
            scenario, folder, embeddings=embeddings, base=base_settings,
            policy_file=write_policy_file(scenario, folder)).replace(
            store="sqlite", backend="echo", admin_token="",
            event_queue_size=max(100_000, len(traffic.requests) + 1))
        self.concurrency = concurrency
        self.recorder = Recorder(traffic)
        self.progress = progress
        self.gateway: Any = None
        self.requests_per_s = 0.0

    def run(self) -> Recorder:
        """Start the gateway, send the traffic, stop the gateway; returns the recorder."""
        from distillguard.gateway.app import build_app
        from distillguard.telemetry.store import open_store

        store = open_store(self.settings)
        keys = {}
        for a in self.traffic.accounts:
            _, keys[a.name] = store.create_key(a.name)
        wrapped = SimKeyStore(store, {a.name: a.key_created_at for a in self.traffic.accounts})
        models = [m.name for m in self.traffic.world.models]
        app = build_app(self.settings, backend=SimulatedBackend(models), store=wrapped,
                        simulation=True)
        self.gateway = app.state.gateway
        # One log line per request from the HTTP client would drown the progress lines.
        quiet = logging.getLogger("httpx")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            with serve_in_thread(app) as url:
                asyncio.run(self._drive(url, keys))
        finally:
            quiet.setLevel(level)
            store.close()
        return self.recorder

    async def _drive(self, url: str, keys: dict[str, str]) -> None:
        import httpx
        import openai

        traffic, rec, gateway = self.traffic, self.recorder, self.gateway
        limits = httpx.Limits(max_connections=self.concurrency,
                              max_keepalive_connections=self.concurrency)
        http = httpx.AsyncClient(limits=limits, timeout=60.0)
        clients = {name: openai.AsyncOpenAI(base_url=url + "/v1", api_key=key,
                                            max_retries=0, http_client=http)
                   for name, key in keys.items()}
        gate = asyncio.Semaphore(self.concurrency)

        async def send(req: SimRequest) -> None:
            headers = {"X-Forwarded-For": req.addr, "User-Agent": req.agent,
                       "X-Distillguard-Sim-Time": repr(req.ts)}
            async with gate:
                try:
                    resp = await clients[req.account].chat.completions.create(
                        **req.body(), extra_headers=headers)
                except openai.PermissionDeniedError:
                    rec.outcome(req, 403, 0)
                    return
                except openai.RateLimitError:
                    rec.outcome(req, 429, 0)
                    return
            rec.outcome(req, 200, resp.usage.completion_tokens if resp.usage else 0)

        progress = Progress(len(traffic.requests), traffic.scenario.duration) \
            if self.progress else None
        sent = 0
        n_actions = 0
        started = time.perf_counter()
        busy = 0.0
        try:
            for tick, reqs in traffic.slices():
                t0 = time.perf_counter()
                if reqs:
                    await asyncio.gather(*(send(r) for r in reqs))
                busy += time.perf_counter() - t0
                sent += len(reqs)
                gateway.clock.advance(tick)
                actions = await asyncio.to_thread(gateway.simulation_round, sent)
                n_actions += len(actions)
                rec.actions(tick, actions)
                last = tick >= traffic.world.end
                rec.round(tick, lambda a: gateway.detection.account_risk(a).risk, last=last)
                if progress is not None:
                    progress.update(sent, tick - traffic.world.start, n_actions, force=last)
        finally:
            await http.aclose()
        self.requests_per_s = sent / busy if busy > 0 else 0.0
        self.wall_s = time.perf_counter() - started

    def risks(self) -> dict[str, float]:
        """Every account's risk after the run."""
        det = self.gateway.detection
        return {a.name: det.account_risk(a.name).risk for a in self.traffic.accounts}

    def close(self) -> None:
        self._tmp.cleanup()
