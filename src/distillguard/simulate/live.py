"""Live mode: real HTTP through the production gateway, with the official SDK.

The gateway is built in-process with ``build_app`` and served by uvicorn on 127.0.0.1,
with two injected parts instead of a simulation flag: an ``ArrivalClock`` and the
``manual_driver``. Every simulated account gets its own API key and
``openai.AsyncOpenAI`` client; requests go out concurrently with their client address in
``X-Forwarded-For``, their user agent, and their simulated arrival time in a header that
only ``SimTimeApp`` (this module's wrapper around the app, never part of the gateway)
reads: it sets the clock for that request's task. ``SimulatedBackend`` answers
instantly with the same answer lengths replay assumes. At the end of each simulated
detection interval the simulator waits for the interval's events, then runs one
detection round (``ManualDriver.round``).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from distillguard.backends.base import FinishReason, GenerationRequest
from distillguard.backends.echo import EchoBackend
from distillguard.clock import ManualClock
from distillguard.config import Settings
from distillguard.detection.driver import ManualDriver, manual_driver
from distillguard.simulate.runner import (
    Progress,
    Recorder,
    Traffic,
    run_settings,
    write_policy_file,
)
from distillguard.simulate.traffic import SimRequest, answer_tokens
from distillguard.testing.server import serve_in_thread

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from distillguard.gateway.runtime import Runtime

SIM_TIME_HEADER = "X-Distillguard-Sim-Time"
_ARRIVAL: contextvars.ContextVar[float | None] = contextvars.ContextVar("dg_sim_arrival",
                                                                         default=None)


class ArrivalClock(ManualClock):
    """The simulated time: a request's own arrival time inside its task (set by
    ``SimTimeApp``), else the latest time the simulator advanced to."""

    def __call__(self) -> float:
        arrival = _ARRIVAL.get()
        return self.now if arrival is None else arrival


class SimTimeApp:
    """Wraps the gateway's app for live simulation: the simulated arrival time header
    sets ``ArrivalClock`` for the request and moves the clock forward."""

    def __init__(self, app: ASGIApp, clock: ArrivalClock) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            name = SIM_TIME_HEADER.lower().encode()
            raw = next((v for k, v in scope["headers"] if k == name), None)
            if raw is not None:
                try:
                    ts = float(raw)
                except ValueError:
                    ts = None
                if ts is not None:
                    self.clock.advance(ts)
                    _ARRIVAL.set(ts)
        await self.app(scope, receive, send)


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


def _limits(concurrency: int) -> Any:
    """Connection limits for the simulated clients. Idle connections are dropped after
    2 s, before the server's keep-alive timeout (uvicorn's 5 s, as httpx's default):
    with both at 5 s, a request sent after a long detection round can go out on a
    connection the server is closing. A connection error in the swarm test (once in five
    suite runs) is thought to be that race; not confirmed."""
    import httpx

    return httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency,
                        keepalive_expiry=2.0)


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
        self.runtime: Runtime | None = None
        self.driver: ManualDriver | None = None
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
        clock = ArrivalClock(self.traffic.world.start)
        app = build_app(self.settings, backend=SimulatedBackend(models), store=wrapped,
                        clock=clock, driver=manual_driver)
        self.runtime = app.state.runtime
        # One log line per request from the HTTP client would drown the progress lines.
        quiet = logging.getLogger("httpx")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            with serve_in_thread(SimTimeApp(app, clock)) as url:
                asyncio.run(self._drive(url, keys))
        finally:
            quiet.setLevel(level)
            store.close()
        return self.recorder

    async def _drive(self, url: str, keys: dict[str, str]) -> None:
        import httpx
        import openai

        traffic, rec, runtime = self.traffic, self.recorder, self.runtime
        assert runtime is not None
        driver = runtime.driver
        assert isinstance(driver, ManualDriver), "live mode runs with the manual driver"
        self.driver = driver
        assert isinstance(runtime.clock, ArrivalClock)
        clock = runtime.clock
        http = httpx.AsyncClient(limits=_limits(self.concurrency), timeout=60.0)
        clients = {name: openai.AsyncOpenAI(base_url=url + "/v1", api_key=key,
                                            max_retries=0, http_client=http)
                   for name, key in keys.items()}
        gate = asyncio.Semaphore(self.concurrency)

        async def send(req: SimRequest) -> None:
            headers = {"X-Forwarded-For": req.addr, "User-Agent": req.agent,
                       SIM_TIME_HEADER: repr(req.ts)}
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
                clock.advance(tick)
                actions = await asyncio.to_thread(driver.round, sent)
                n_actions += len(actions)
                rec.actions(tick, actions)
                last = tick >= traffic.world.end
                rec.round(tick, lambda a: driver.pipeline.account_risk(a).risk, last=last)
                if progress is not None:
                    progress.update(sent, tick - traffic.world.start, n_actions, force=last)
        finally:
            await http.aclose()
        self.requests_per_s = sent / busy if busy > 0 else 0.0
        self.wall_s = time.perf_counter() - started

    def risks(self) -> dict[str, float]:
        """Every account's risk after the run."""
        assert self.driver is not None, "risks() after run()"
        det = self.driver.pipeline
        return {a.name: det.account_risk(a.name).risk for a in self.traffic.accounts}

    def close(self) -> None:
        self._tmp.cleanup()


class TargetRun:
    """A scenario's traffic sent to a gateway that is already running (``--target``),
    in compressed real time, so that an analyst can watch it arrive on the console.

    The scenario's span is squeezed into ``duration_s`` wall seconds, each request sent
    at its compressed arrival time. Each account's key is created through the admin API
    just before its first request, so key-creation bursts keep their shape. Requests
    carry the simulated client's address in ``X-Forwarded-For`` (the gateway reads it
    only with ``trust_forwarded_for``) and its user agent; every request asks for the
    model the target serves. The gateway runs on its own clock: detection and rules act
    as they would on real traffic, only faster.
    """

    def __init__(self, traffic: Traffic, url: str, admin_token: str, *,
                 duration_s: float = 60.0, concurrency: int = 32, progress: bool = True
                 ) -> None:
        if duration_s <= 0:
            raise ValueError("the duration must be positive seconds")
        self.traffic = traffic
        self.url = url.rstrip("/").removesuffix("/v1")
        self.admin_token = admin_token
        self.duration_s = duration_s
        self.concurrency = concurrency
        self.progress = progress
        self.recorder = Recorder(traffic)
        self.statuses: dict[str, dict[int, int]] = {}
        self.transport_errors = 0
        # account -> the task creating (then holding) its key; tests reuse the keys.
        self.keys: dict[str, asyncio.Future[str]] = {}

    def run(self) -> Recorder:
        """Send the traffic; returns the recorder of outcomes."""
        quiet = logging.getLogger("httpx")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            asyncio.run(self._drive())
        finally:
            quiet.setLevel(level)
        return self.recorder

    async def _drive(self) -> None:
        import httpx

        world = self.traffic.world
        speed = (world.end - world.start) / self.duration_s
        groups = {a.name: a.group for a in self.traffic.accounts}
        async with httpx.AsyncClient(base_url=self.url, limits=_limits(self.concurrency),
                                     timeout=60.0) as http:
            admin = {"Authorization": f"Bearer {self.admin_token}"}
            keys = self.keys

            async def create_key(account: str) -> str:
                r = await http.post("/admin/keys", json={"account": account,
                                                         "name": "simulate"}, headers=admin)
                if r.status_code != 201:
                    raise RuntimeError(f"creating a key for {account} through {self.url}"
                                       f"/admin/keys answered {r.status_code}: {r.text[:200]}")
                return str(r.json()["key"])

            def key_of(account: str) -> asyncio.Future[str]:
                if account not in keys:
                    keys[account] = asyncio.ensure_future(create_key(account))
                return keys[account]

            first = self.traffic.requests[0].account if self.traffic.requests else None
            model = None
            if first is not None:
                r = await http.get("/v1/models",
                                   headers={"Authorization": f"Bearer {await key_of(first)}"})
                r.raise_for_status()
                model = r.json()["data"][0]["id"]
            gate = asyncio.Semaphore(self.concurrency)
            rec = self.recorder

            async def send(req: SimRequest) -> None:
                key = await key_of(req.account)
                headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": req.addr,
                           "User-Agent": req.agent}
                async with gate:
                    try:
                        r = await http.post("/v1/chat/completions",
                                            json={**req.body(), "model": model},
                                            headers=headers)
                        status = r.status_code
                        tokens = (r.json().get("usage") or {}).get("completion_tokens", 0) \
                            if status == 200 else 0
                    except httpx.HTTPError as exc:
                        # Counted as 599 (no answer); the first one is shown once.
                        if not self.transport_errors:
                            print(f"  no answer from the gateway: {exc!r}", file=sys.stderr)
                        self.transport_errors += 1
                        status, tokens = 599, 0
                counts = self.statuses.setdefault(groups.get(req.account, "?"), {})
                counts[status] = counts.get(status, 0) + 1
                rec.outcome(req, status, tokens)

            started = last = time.monotonic()
            tasks: set[asyncio.Task[None]] = set()
            for i, req in enumerate(self.traffic.requests):
                delay = started + (req.ts - world.start) / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= 4 * self.concurrency:
                    # The gateway is slower than the schedule: wait rather than pile up.
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.ensure_future(send(req))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if self.progress and time.monotonic() - last >= 5.0:
                    last = time.monotonic()
                    print(f"  {last - started:4.0f} s: sent {i + 1:,}/"
                          f"{len(self.traffic.requests):,}; {self.summary()}",
                          file=sys.stderr, flush=True)
            if tasks:
                await asyncio.gather(*tasks)
            self.wall_s = time.monotonic() - started

    def summary(self) -> str:
        """Answers so far by account group and status, e.g. ``bulk_harvester 200x90 403x10``."""
        return "; ".join(f"{g} " + " ".join(f"{s}x{n}" for s, n in sorted(c.items()))
                         for g, c in sorted(self.statuses.items()))
