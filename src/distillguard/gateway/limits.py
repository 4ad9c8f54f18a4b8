"""Flood defence around the gateway: the HTTP server's own limits, per-account
concurrency, the per-request cost cap, and cancelling work nobody waits for.

**The server (``serve`` / ``server_config``).** uvicorn gives a keep-alive timeout
(``timeout_keep_alive``), a global cap on connections and tasks (``limit_concurrency``,
503 above it), a listen ``backlog`` and, for its h11 parser only, a cap on the buffered
request head (``h11_max_incomplete_event_size``). It has no timeout for a request's
headers or body (a client that sends one header byte every few seconds holds its
connection, its file descriptor and its buffer forever: 1,100 of them at ``ulimit -n
1024`` left ``/healthz`` unanswered for 40 s), no per-address connection cap, and no head
size cap with httptools. ``guarded_protocol`` adds these to whichever protocol class
uvicorn would use, at the asyncio-protocol level, before any ASGI code runs:

- a **header timeout**: from connect (or the end of the previous response) until the
  request's head is parsed, ``http_header_timeout`` seconds, else 408 and close;
- a **body timeout**: from the head until the body's last byte, ``http_body_timeout``,
  else 408 (if nothing was answered yet) and close, which the app sees as a disconnect;
- a **head size cap**: ``http_max_header_bytes`` buffered before the head is complete,
  else 431 and close (both parsers);
- a **per-address cap**: ``http_max_connections_per_address`` open connections per
  client IP; the next one is closed as soon as it is accepted, so it holds a descriptor
  for microseconds, not for its lifetime.

**Admission helpers** (called by the request path): ``ConcurrencyLimiter`` (429 with
``Retry-After`` beyond ``max_concurrent_per_account`` requests in flight; in-process, per
replica), ``check_cost`` (the ``max_request_tokens`` cap on n x max_tokens, a 400 naming
the field), and ``complete_unless_gone`` (a non-stream completion cancelled when the client
disconnects, so that nothing is generated for nobody).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from distillguard.gateway import errors

if TYPE_CHECKING:
    from distillguard.backends.base import GenerationRequest
    from distillguard.config import Settings

log = logging.getLogger("distillguard.gateway")

_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
        b"connection: close\r\ncontent-length: 16\r\n\r\nrequest timeout\n")
_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
        b"connection: close\r\ncontent-length: 26\r\n\r\nrequest head is too large\n")


class ConnectionGuard:
    """Server-wide state of the connection limits: open connections per address and
    counts of what was cut, exported on ``/metrics`` (``server_config`` hands ``gauges``
    to the app's runtime). The series carry no labels: addresses stay in ``open``, out of
    the metrics, so that no client can add series."""

    def __init__(self, *, header_timeout: float, body_timeout: float, max_header_bytes: int,
                 per_address: int) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_header_bytes = max_header_bytes
        self.per_address = per_address
        self.open: dict[str, int] = {}
        self.connections = 0  # open now, whatever their address
        self.accepted = 0
        self.refused_per_address = 0
        self.header_timeouts = 0
        self.body_timeouts = 0
        self.heads_too_large = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionGuard:
        """The limits the ``http_*`` settings name."""
        return cls(header_timeout=settings.http_header_timeout,
                   body_timeout=settings.http_body_timeout,
                   max_header_bytes=settings.http_max_header_bytes,
                   per_address=settings.http_max_connections_per_address)

    def gauges(self) -> list[tuple[str, str, str, float]]:
        """(name, type, help, value) series for the metrics page."""
        return [
            ("distillguard_http_connections_open", "gauge",
             "HTTP connections open now (those refused at accept not counted).",
             self.connections),
            ("distillguard_http_client_addresses", "gauge",
             "Client addresses with a connection open now (tracked while "
             "http_max_connections_per_address is set).", len(self.open)),
            ("distillguard_http_connections_accepted_total", "counter",
             "HTTP connections accepted and kept.", self.accepted),
            ("distillguard_http_connections_refused_total", "counter",
             "Connections closed at once: their address had too many open.",
             self.refused_per_address),
            ("distillguard_http_header_timeouts_total", "counter",
             "Connections closed because the request head did not arrive in time.",
             self.header_timeouts),
            ("distillguard_http_body_timeouts_total", "counter",
             "Requests cut because the body did not arrive in time.", self.body_timeouts),
            ("distillguard_http_heads_too_large_total", "counter",
             "Requests refused because the head was above http_max_header_bytes.",
             self.heads_too_large),
        ]


def guarded_protocol(base: type, guard: ConnectionGuard) -> type:
    """A subclass of uvicorn's HTTP protocol class ``base`` that enforces ``guard``.

    It relies only on what both uvicorn protocols share: ``cycle`` (the current
    request, with ``more_body``, ``response_started`` and ``response_complete``),
    ``client``, ``transport`` and ``on_response_complete``.
    """

    class Guarded(base):  # type: ignore[misc]
        _dg_timer: asyncio.TimerHandle | None = None
        _dg_addr: str | None = None
        _dg_counted = False
        _dg_head_bytes = 0
        _dg_cycle: Any = None  # the request whose body timer is armed

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            client = self.client
            addr = client[0] if client else None
            if addr is not None and guard.per_address > 0:
                if guard.open.get(addr, 0) >= guard.per_address:
                    guard.refused_per_address += 1
                    transport.abort()
                    return
                guard.open[addr] = guard.open.get(addr, 0) + 1
                self._dg_addr = addr
            self._dg_counted = True
            guard.connections += 1
            guard.accepted += 1
            self._dg_arm(guard.header_timeout, "head")

        def connection_lost(self, exc: Exception | None) -> None:
            self._dg_cancel()
            if self._dg_counted:
                self._dg_counted = False
                guard.connections -= 1
            addr = self._dg_addr
            if addr is not None:
                self._dg_addr = None
                left = guard.open.get(addr, 1) - 1
                if left > 0:
                    guard.open[addr] = left
                else:
                    guard.open.pop(addr, None)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                if cycle is not self._dg_cycle:
                    # A new request's head was parsed: its body's clock starts now.
                    self._dg_cycle = cycle
                    self._dg_head_bytes = 0
                    if cycle.more_body:
                        self._dg_arm(guard.body_timeout, "body")
                    else:
                        self._dg_cancel()
                elif not cycle.more_body:
                    self._dg_cancel()  # the whole body is in
                return
            # Still waiting for a complete head: these bytes are all head.
            self._dg_head_bytes += len(data)
            if 0 < guard.max_header_bytes < self._dg_head_bytes:
                guard.heads_too_large += 1
                self._dg_close(_431)

        # httptools hands over a head that arrived whole in one read without any size
        # check: count it as it is parsed. Raising here makes uvicorn answer 400 before
        # any ASGI task exists; ``send_400_response`` turns that into 431.
        _dg_parsed = 0
        _dg_oversized = False

        def on_message_begin(self) -> None:
            self._dg_parsed = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._dg_count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._dg_count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _dg_count(self, n: int) -> None:
            self._dg_parsed += n
            if 0 < guard.max_header_bytes < self._dg_parsed:
                self._dg_oversized = True
                raise ValueError("request head too large")

        def send_400_response(self, msg: str) -> None:
            if self._dg_oversized:
                guard.heads_too_large += 1
                self._dg_close(_431)
                return
            super().send_400_response(msg)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._dg_head_bytes = 0
                self._dg_arm(guard.header_timeout, "head")

        def _dg_arm(self, seconds: float, phase: str) -> None:
            self._dg_cancel()
            if seconds > 0:
                self._dg_timer = asyncio.get_running_loop().call_later(
                    seconds, self._dg_expired, phase)

        def _dg_cancel(self) -> None:
            if self._dg_timer is not None:
                self._dg_timer.cancel()
                self._dg_timer = None

        def _dg_expired(self, phase: str) -> None:
            self._dg_timer = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if phase == "head":
                if cycle is not None and not cycle.response_complete:
                    return  # a request is being served: not ours to cut
                guard.header_timeouts += 1
                self._dg_close(_408)
            else:
                if cycle is None or not cycle.more_body or cycle.response_complete:
                    return
                guard.body_timeouts += 1
                self._dg_close(None if cycle.response_started else _408)

        def _dg_close(self, response: bytes | None) -> None:
            if response is not None:
                self.transport.write(response)
            self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def server_config(app: Any, settings: Settings, *, guard: ConnectionGuard | None = None,
                  **overrides: Any) -> Any:
    """The ``uvicorn.Config`` that serves ``app`` with the ``http_*`` limits; a gateway
    app (``build_app``) shows the guard's counts on its ``/metrics``."""
    import uvicorn

    guard = guard or ConnectionGuard.from_settings(settings)
    runtime = getattr(getattr(app, "state", None), "runtime", None)
    if runtime is not None:
        runtime.add_gauges(guard.gauges)
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools is optional for uvicorn
        from uvicorn.protocols.http.h11_impl import (  # type: ignore[assignment]
            H11Protocol as base,
        )
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "loop": "auto",
        "http": guarded_protocol(base, guard),
        "log_level": settings.log_level, "access_log": False,
        # The gateway reads X-Forwarded-For itself (trust_forwarded_for); uvicorn's
        # would trust 127.0.0.1's header by default.
        "proxy_headers": False,
        "timeout_graceful_shutdown": 30,
        "timeout_keep_alive": max(1, round(settings.http_keep_alive_timeout)),
        "limit_concurrency": settings.http_max_connections or None,
        "h11_max_incomplete_event_size": settings.http_max_header_bytes or None,
        "backlog": 2048,
    }
    options.update(overrides)
    config = uvicorn.Config(app, **options)
    config.dg_guard = guard  # type: ignore[attr-defined]
    return config


# -- admission helpers ---------------------------------------------------------------

ESTABLISHED = 1


def standing(ctx: Any, established_age: float, now: float) -> int:
    """The request's rank for the backend's queue: ``ESTABLISHED`` (served first, shed
    last) when its key is at least ``established_age`` seconds old and the account is
    under no policy action, else 0. Key age stands for account age: a sybil farm's keys
    are days old at most, a paying customer's months."""
    created = ctx.key_created_at
    if created is None or ctx.action is not None:
        return 0
    return ESTABLISHED if now - created >= established_age else 0


class ConcurrencyLimiter:
    """At most ``limit`` requests in flight per account in this process (0: no limit).

    Why per account and not a global semaphore: a global cap lets one busy account take
    every slot; a per-account cap gives each account the same share of an upstream, which
    is the fairness the local backend's queue gives by scheduling.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: dict[str, int] = {}
        self.refused = 0

    def acquire(self, account: str | None) -> Callable[[], None]:
        """Count one request of ``account`` (429 if over the limit); returns the
        function that releases it, safe to call more than once."""
        if self.limit <= 0 or account is None:
            return _nothing
        count = self.in_flight.get(account, 0)
        if count >= self.limit:
            self.refused += 1
            raise errors.RateLimited(
                f"This account already has {count} requests in progress, the most allowed "
                "at once. Try again in 1 s.", code="too_many_concurrent_requests",
                headers={"Retry-After": "1"})
        self.in_flight[account] = count + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self.in_flight[account] - 1
            if left:
                self.in_flight[account] = left
            else:
                del self.in_flight[account]

        return release


def _nothing() -> None:
    return None


class Held:
    """An ASGI response that calls ``release`` once it is sent (or fails), so that a
    stream holds its account's concurrency slot for as long as it runs."""

    def __init__(self, response: Any, release: Callable[[], None]) -> None:
        self.response = response
        self.release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.release()


def check_cost(request: GenerationRequest, cap: int) -> None:
    """400 naming ``max_tokens`` when n x max_tokens is above ``cap`` (0: no cap)."""
    cost = request.n * request.max_tokens
    if cap > 0 and cost > cap:
        param = "n" if request.n > 1 and request.max_tokens <= cap else "max_tokens"
        raise errors.InvalidRequest(
            f"This request asks for up to n x max_tokens = {request.n} x "
            f"{request.max_tokens} = {cost} tokens, above this server's cap of {cap} per "
            "request. Lower max_tokens or n.", param=param, code="request_too_costly")


class ClientGone(errors.APIError):
    """The client disconnected before its answer was ready (nginx's 499)."""

    status = 499
    code = "client_disconnected"


async def complete_unless_gone(receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
                               work: Awaitable[Any]) -> Any:
    """``await work``, cancelled if the client disconnects meanwhile (``ClientGone``).

    Call after the request body was read: the next ASGI message is then
    ``http.disconnect``, which the server sends when the connection closes.
    """
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientGone("the client disconnected before the answer was ready")


def capped(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters (with a marker), for stored fields."""
    if text is None or limit <= 0 or len(text) <= limit:
        return text
    return text[: max(0, limit - 12)] + "...[cut]"
