"""Shared fixtures: settings in a temporary data folder, a fresh small gateway per test,
the official openai SDK pointed at it in-process, and a real uvicorn server for sockets."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from distillguard.config import Settings
from distillguard.gateway.app import build_app
from distillguard.testing.server import free_port, serve_in_thread  # noqa: F401

ADMIN_TOKEN = "test-admin-token"
PG_BASE_DSN = os.environ.get(
    "TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
)


@pytest.fixture(autouse=True)
def _registries_left_as_found() -> Iterator[None]:
    """Fail a test that leaves an entry in a registry (use ``Registry.temporarily``)."""
    from distillguard.backends.base import BACKENDS
    from distillguard.detection.signals import SIGNALS
    from distillguard.policy.ratelimit import RATE_STORES
    from distillguard.simulate.populations import POPULATIONS
    from distillguard.telemetry.store import STORES
    from distillguard.watermark.registry import SCHEMES

    registries = (BACKENDS, STORES, RATE_STORES, SIGNALS, SCHEMES, POPULATIONS)
    # names() loads the built-ins and entry points first, so only what the test adds shows.
    before = [frozenset(r.names()) for r in registries]
    yield
    for registry, names in zip(registries, before):
        extra = registry.registered_so_far() - names
        assert not extra, f"test left {sorted(extra)} in the {registry.kind} registry"


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A PostgreSQL DSN whose search_path is a fresh schema, dropped after the test."""
    psycopg = pytest.importorskip("psycopg")
    from psycopg.conninfo import make_conninfo

    try:
        admin = psycopg.connect(PG_BASE_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_BASE_DSN!r}: {exc}")
    schema = f"dg_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield make_conninfo(PG_BASE_DSN, options=f"-c search_path={schema}")
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def nats_names() -> Iterator[dict[str, str]]:
    """Names of a fresh JetStream stream and subject (skip without NATS); dropped after."""
    nats = pytest.importorskip("nats")
    from distillguard.detection.jetstream import wait_for_stream

    if not wait_for_stream("nats://127.0.0.1:4222", timeout=2):
        pytest.skip("no NATS JetStream at 127.0.0.1:4222")
    tag = uuid.uuid4().hex[:10]
    names = {"nats_stream": f"DGTEST_{tag}", "nats_subject": f"dgtest.{tag}"}
    yield names

    import asyncio

    async def drop() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        try:
            await nc.jetstream().delete_stream(names["nats_stream"])
        except Exception:  # noqa: BLE001 - never created
            pass
        await nc.close()

    asyncio.run(drop())


@pytest.fixture
def make_settings(tmp_path: Path):
    """Settings isolated from the environment, with state under ``tmp_path``."""

    def make(**overrides: Any) -> Settings:
        values = {"data_dir": str(tmp_path / "data"), "admin_token": ADMIN_TOKEN,
                  "event_flush_interval": 0.02, "backend": "echo", "model_name": "echo",
                  # Detection runs, without the embedding model (7 s to load).
                  "detection_embeddings": False, "detection_interval": 0.2}
        values.update(overrides)
        return Settings.load(env={}, **values)

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


class Harness:
    """A started gateway app with helpers to make keys and SDK clients."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.runtime = app.state.runtime
        self.transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))

    def key(self, account: str = "alice") -> str:
        _, key = self.runtime.store.create_key(account)
        return key

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport, base_url="http://gateway",
                                 **kwargs)

    def sdk(self, key: str | None = None, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url="http://gateway/v1", api_key=key or self.key(), max_retries=0,
            http_client=httpx.AsyncClient(transport=self.transport,
                                          base_url="http://gateway"), **kwargs)

    def events(self) -> list[Any]:
        self.runtime.writer.flush()
        return list(self.runtime.store.iter_events())


@pytest.fixture
async def harness_factory(make_settings) -> AsyncIterator[Any]:
    """Start gateways (their lifespans run) and stop them at the end of the test."""
    stack = contextlib.AsyncExitStack()

    async def start(*, backend: Any = None, driver: Any = None, clock: Any = None,
                    **overrides: Any) -> Harness:
        """``backend``: a Backend object, or a name for the ``backend`` setting;
        ``driver``/``clock``: injected into the runtime (default: production's)."""
        if isinstance(backend, str):
            overrides["backend"], backend = backend, None
        injected = {k: v for k, v in (("driver", driver), ("clock", clock)) if v is not None}
        app = build_app(make_settings(**overrides), backend=backend, **injected)
        await stack.enter_async_context(app.router.lifespan_context(app))
        return Harness(app)

    async with stack:
        yield start


@pytest.fixture
async def harness(harness_factory) -> Harness:
    return await harness_factory()


@pytest.fixture
def live_server(make_settings):
    """Factory: a real uvicorn server for ``build_app(settings, backend=...)``."""
    stack = contextlib.ExitStack()

    def start(*, backend: Any = None, **overrides: Any) -> tuple[str, Any]:
        app = build_app(make_settings(**overrides), backend=backend)
        url = stack.enter_context(serve_in_thread(app))
        return url, app.state.runtime

    with stack:
        yield start
