"""Per-request context: what each layer learned, gathered into the request's event."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from distillguard.telemetry.events import RequestEvent

# Request ids: a random per-process prefix and a counter. Unique across replicas and
# restarts without paying for os.urandom on every request.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


class RequestContext:
    """Filled in as the request moves through the pipeline; becomes one RequestEvent."""

    __slots__ = ("ts", "started", "request_id", "endpoint", "client_addr", "user_agent",
                 "status", "account", "key_id", "model", "params", "prompt", "prompt_tokens",
                 "completion_tokens", "stream", "error_type", "error_code", "watermark",
                 "action", "features", "key_created_at", "tokens_reserved")

    def __init__(self, endpoint: str, client_addr: str | None, user_agent: str | None,
                 *, ts: float | None = None) -> None:
        # ``ts`` comes from the runtime's clock: simulated time in replay and tests.
        self.ts = time.time() if ts is None else ts
        self.started = time.perf_counter()
        self.request_id = new_request_id()
        self.endpoint = endpoint
        self.client_addr = client_addr
        self.user_agent = user_agent
        self.status = 0
        self.account: str | None = None
        self.key_id: str | None = None
        self.key_created_at: float | None = None  # admission ranks older accounts first
        self.tokens_reserved = False  # the route settles its TPM reservation itself
        self.model: str | None = None
        self.params: dict[str, Any] = {}
        self.prompt: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.stream = False
        self.error_type: str | None = None
        self.error_code: str | None = None
        self.watermark: dict[str, Any] | None = None
        self.action: str | None = None  # the account's current policy action, if any
        self.features: dict[str, Any] | None = None  # detection.features of the prompt

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def event(self, *, retain_prompts: bool = True) -> RequestEvent:
        """The request's event; without ``retain_prompts`` the prompt text is left out."""
        return RequestEvent(
            ts=self.ts, request_id=self.request_id, endpoint=self.endpoint,
            status=self.status, latency_ms=round(self.elapsed() * 1000.0, 3),
            account=self.account, key_id=self.key_id, client_addr=self.client_addr,
            user_agent=self.user_agent, model=self.model, params=self.params,
            prompt=self.prompt if retain_prompts else None, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens, stream=self.stream,
            error_type=self.error_type, error_code=self.error_code, watermark=self.watermark,
            features=self.features,
        )

    def fail(self, exc: Exception) -> None:
        """Note a typed API error (status, type and code) as the request's outcome."""
        from distillguard.gateway.errors import APIError

        if isinstance(exc, APIError):
            self.status = exc.status
            self.error_type = exc.type
            self.error_code = exc.code
