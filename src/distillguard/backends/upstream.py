"""``UpstreamBackend``: forward requests to any OpenAI-compatible server.

The gateway stays in front (auth, admission, events); this backend only relays the
client's JSON body to the upstream with the model name mapped and the gateway's
``max_tokens`` / ``n`` enforced, and turns the answer into a ``Completion`` or a stream
of ``StreamDelta`` + ``StreamEnd``.

Why aiohttp with one pooled session: the proxy is CPU-bound and the HTTP client is most
of its cost; aiohttp measured ~7x the throughput of httpx here (MEASURED.md). Per request
we do one ``orjson`` encode, one POST on a kept-alive connection and one decode.

Errors become ``BackendError``: unreachable upstream, dropped connection or upstream 5xx
-> 502 ``upstream_error``; no answer within ``timeout`` -> 504 ``upstream_timeout``;
upstream 4xx -> the same status with the upstream's message and code, except 401/403,
which concern the gateway's own upstream key rather than the client, and become 502
``upstream_auth_error`` (an upstream's 401 message may quote part of that key).
The upstream API key never appears in an error message.

Watermarking needs the logits, which a remote server does not expose: responses served
by this backend are not watermarked, whatever ``request.watermark`` holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from yarl import URL

from distillguard.backends.base import (
    BackendError,
    Choice,
    Completion,
    FinishReason,
    GenerationRequest,
    StreamDelta,
    StreamEnd,
    StreamItem,
)
from distillguard.config import Settings, SettingsError


def parse_model_map(text: str) -> dict[str, str]:
    """Parse ``upstream_models``: ``public=upstream,public2=upstream2``.

    An entry without ``=`` serves the upstream name as the public one.
    """
    mapping: dict[str, str] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        public, sep, upstream = (part.strip() for part in entry.partition("="))
        if not sep:
            upstream = public
        if not public or not upstream:
            raise SettingsError(f"setting 'upstream_models': entry {entry!r} is not "
                                "'public=upstream'")
        mapping[public] = upstream
    return mapping


def _finish(reason: Any) -> FinishReason:
    # Upstreams also say "content_filter", "tool_calls", "eos" or nothing: all of them
    # mean the choice ended before the token budget.
    return "length" if reason in ("length", "max_tokens") else "stop"


class SSEParser:
    """Incremental Server-Sent Events parser: bytes in, complete ``data`` payloads out.

    Handles events cut at any byte, CRLF line ends, multi-line ``data`` fields (joined
    with newlines, as the SSE specification says), and skips comments (``: ping``) and the
    ``event``/``id``/``retry`` fields, which OpenAI-compatible streams do not need.
    """

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes; return the payloads of the events they completed."""
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            self._line(buffer[start:end], events)
            start = end + 1
        self._buffer = buffer[start:]
        return events

    def flush(self) -> list[bytes]:
        """End of stream: return the last event even if its blank line never came."""
        events: list[bytes] = []
        if self._buffer:
            self._line(self._buffer, events)
            self._buffer = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)


class UpstreamBackend:
    """A ``Backend`` that relays to an OpenAI-compatible API at ``base_url`` (with /v1).

    ``model_map`` maps public model names to upstream names; when empty, ``start()``
    asks the upstream's ``GET /models`` and serves those names unchanged. ``timeout`` is
    the whole-response limit for plain requests, and the connect limit and the longest
    silence between two stream chunks for streams (a long stream that keeps flowing is
    never cut). ``max_connections`` bounds the pool of kept-alive connections.
    """

    def __init__(self, base_url: str, *, api_key: str = "",
                 model_map: dict[str, str] | None = None, timeout: float = 60.0,
                 max_connections: int = 100) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_map = dict(model_map or {})
        self.timeout = timeout
        self.max_connections = max_connections
        self._api_key = api_key
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # Built once: yarl parsing and ClientTimeout construction are per-request costs.
        self._urls = {"chat": URL(self.base_url + "/chat/completions"),
                      "completion": URL(self.base_url + "/completions")}
        self._plain_timeout = aiohttp.ClientTimeout(total=timeout)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=timeout,
                                                     sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"UpstreamBackend({self.base_url!r}, models={self.models()!r})"

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamBackend:
        """Build from ``upstream_url``, ``upstream_api_key``, ``upstream_models``,
        ``upstream_timeout`` and ``upstream_max_connections``."""
        if not settings.upstream_url:
            raise SettingsError("setting 'upstream_url' is empty: backend = upstream needs "
                                "the base URL of an OpenAI-compatible API, including /v1")
        return cls(settings.upstream_url, api_key=settings.upstream_api_key.reveal(),
                   model_map=parse_model_map(settings.upstream_models),
                   timeout=settings.upstream_timeout,
                   max_connections=settings.upstream_max_connections)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the connection pool; discover the upstream's models if none are mapped."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                         keepalive_timeout=30, ttl_dns_cache=300)
        # No cookie jar: an API relay must not carry state from one client to the next.
        self._session = aiohttp.ClientSession(connector=connector,
                                              cookie_jar=aiohttp.DummyCookieJar())
        if not self.model_map:
            try:
                self.model_map = {name: name for name in await self._list_models()}
            except BaseException:
                await self.close()
                raise

    async def close(self) -> None:
        """Close the pool; requests still running end with a 502 BackendError."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def models(self) -> list[str]:
        """Public model names, in the order of ``upstream_models`` (or the upstream's)."""
        return list(self.model_map)

    async def _list_models(self) -> list[str]:
        session = self._require_session()
        url = self.base_url + "/models"
        try:
            async with session.get(url, headers=self._headers,
                                   timeout=self._plain_timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise BackendError(f"upstream {url} did not answer within {self.timeout:g} s",
                               status=504, code="upstream_timeout") from None
        except aiohttp.ClientError as exc:
            raise BackendError(self._scrub(f"cannot list models at {url}: {exc}"),
                               status=502, code="upstream_error") from None
        if status != 200:
            error = self._http_error(status, raw)
            raise BackendError(f"cannot list models at {url}: {error.message}",
                               status=502, code=error.code)
        try:
            names = [str(item["id"]) for item in orjson.loads(raw)["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise BackendError(f"{url} did not answer an OpenAI model list ({exc!r}); set "
                               "upstream_models", status=502, code="upstream_error") from None
        if not names:
            raise BackendError(f"{url} lists no models; set upstream_models", status=502,
                               code="upstream_error")
        return names

    # --- requests ------------------------------------------------------------------

    async def complete(self, request: GenerationRequest) -> Completion:
        """Relay a plain (non-streaming) request and parse the upstream's answer."""
        session = self._require_session()
        try:
            async with session.post(self._urls[request.kind],
                                    data=self._payload(request, stream=False),
                                    headers=self._headers,
                                    timeout=self._plain_timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise self._timeout_error() from None
        except aiohttp.ClientError as exc:
            raise self._connection_error(exc) from None
        if status != 200:
            raise self._http_error(status, raw)
        try:
            data = orjson.loads(raw)
            result = self._parse_completion(data, request.kind == "chat")
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise BackendError(f"upstream answered a malformed completion ({exc!r})",
                               status=502, code="upstream_error") from None
        request.usage.prompt_tokens = result.prompt_tokens
        request.usage.completion_tokens = result.completion_tokens
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Relay a streaming request; yield deltas as upstream events arrive.

        Token counts come from the upstream's final usage chunk (asked for with
        ``stream_options.include_usage``); an upstream that sends none gets 0 and 0 in
        ``StreamEnd``, since counting tokens here would need the upstream's tokenizer.
        Until then ``request.usage`` counts one token per text delta (what servers send),
        so a stream closed early is still charged about what it received.
        Errors after the first delta are raised from the iterator.
        """
        session = self._require_session()
        state = _StreamState(self, chat=request.kind == "chat")
        try:
            async with session.post(self._urls[request.kind],
                                    data=self._payload(request, stream=True),
                                    headers=self._headers,
                                    timeout=self._stream_timeout) as resp:
                if resp.status != 200:
                    raise self._http_error(resp.status, await resp.read())
                parser = SSEParser()
                # Read to the end even after [DONE], so the connection goes back to the
                # pool instead of being closed with unread bytes.
                async for chunk in resp.content.iter_any():
                    if not state.done:
                        for delta in state.consume(parser.feed(chunk)):
                            if delta.text:
                                request.usage.completion_tokens += 1
                            yield delta
                if not state.done:
                    for delta in state.consume(parser.flush()):
                        yield delta
        except TimeoutError:
            if not state.done:
                raise self._timeout_error() from None
        except aiohttp.ClientError as exc:
            if not state.done:
                raise self._connection_error(exc, mid_stream=bool(state.seen)) from None
        # Some servers end without [DONE]; that is fine once every choice has finished.
        if not state.done and (not state.seen or state.seen - state.finished):
            raise BackendError("upstream closed the stream before it finished", status=502,
                               code="upstream_error")
        usage = state.usage or {}
        if usage:
            request.usage.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            request.usage.completion_tokens = int(usage.get("completion_tokens") or 0)
        yield StreamEnd(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0))

    # --- helpers -------------------------------------------------------------------

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BackendError("upstream backend is not started", status=503,
                               code="backend_not_ready")
        return self._session

    def _payload(self, request: GenerationRequest, *, stream: bool) -> bytes:
        body = dict(request.body) if request.body else self._body_from_fields(request)
        body["model"] = self.model_map.get(request.model, request.model)
        # The gateway's limits win over what the client asked (default and max tokens, n).
        tokens_field = ("max_completion_tokens" if "max_completion_tokens" in body
                        else "max_tokens")
        body[tokens_field] = request.max_tokens
        if request.n != 1 or "n" in body:
            body["n"] = request.n
        body["stream"] = stream
        if stream:
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                      "include_usage": True}
        else:
            body.pop("stream_options", None)
        return orjson.dumps(body)

    @staticmethod
    def _body_from_fields(request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"temperature": request.temperature, "top_p": request.top_p}
        if request.kind == "chat":
            body["messages"] = request.messages or []
        else:
            body["prompt"] = request.prompt or ""
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if request.user is not None:
            body["user"] = request.user
        return body

    @staticmethod
    def _parse_completion(data: dict[str, Any], chat: bool) -> Completion:
        raw_choices = data.get("choices")
        if not raw_choices:
            raise ValueError("no choices")
        choices = []
        for position, raw in enumerate(raw_choices):
            if chat:
                text = (raw.get("message") or {}).get("content") or ""
            else:
                text = raw.get("text") or ""
            choices.append(Choice(index=int(raw.get("index", position)), text=text,
                                  finish_reason=_finish(raw.get("finish_reason"))))
        choices.sort(key=lambda c: c.index)
        usage = data.get("usage") or {}
        completion_tokens = int(usage.get("completion_tokens") or 0)
        # The upstream counts tokens for the whole response only; with one choice that
        # count is the choice's own.
        if len(choices) == 1:
            choices[0].completion_tokens = completion_tokens
        return Completion(choices=choices, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=completion_tokens)

    def _parse_chunk(self, payload: bytes, chat: bool
                     ) -> list[tuple[StreamDelta | None, dict[str, Any] | None]]:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise BackendError("upstream sent a stream event that is not JSON", status=502,
                               code="upstream_error") from None
        if not isinstance(data, dict):
            raise BackendError("upstream sent a stream event that is not an object",
                               status=502, code="upstream_error")
        if data.get("error"):
            message, _, _ = self._error_fields(data)
            raise BackendError(self._scrub(f"upstream failed mid-stream: {message}"),
                               status=502, code="upstream_error")
        out: list[tuple[StreamDelta | None, dict[str, Any] | None]] = []
        for position, raw in enumerate(data.get("choices") or ()):
            if chat:
                text = (raw.get("delta") or {}).get("content") or ""
            else:
                text = raw.get("text") or ""
            reason = raw.get("finish_reason")
            if text or reason:
                out.append((StreamDelta(index=int(raw.get("index", position)), text=text,
                                        finish_reason=_finish(reason) if reason else None),
                            None))
        if data.get("usage"):
            out.append((None, data["usage"]))
        return out

    @staticmethod
    def _error_fields(data: Any) -> tuple[str, str | None, str | None]:
        """(message, code, param) from an OpenAI error body, tolerating variants."""
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            param = error.get("param")
            return (str(error.get("message") or ""), str(code) if code else None,
                    str(param) if param else None)
        if isinstance(error, str):
            return error, None, None
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return data["message"], None, None
        return "", None, None

    def _http_error(self, status: int, raw: bytes) -> BackendError:
        try:
            message, code, param = self._error_fields(orjson.loads(raw))
        except orjson.JSONDecodeError:
            message, code, param = raw[:200].decode("utf-8", "replace").strip(), None, None
        message = self._scrub(message)
        if status in (401, 403):
            return BackendError(f"upstream rejected the gateway's credentials (HTTP {status})",
                                status=502, code="upstream_auth_error")
        if 400 <= status < 500:
            return BackendError(message or f"upstream answered HTTP {status}", status=status,
                                code=code or "upstream_error", param=param)
        detail = f": {message}" if message else ""
        return BackendError(f"upstream answered HTTP {status}{detail}", status=502,
                            code="upstream_error")

    def _timeout_error(self) -> BackendError:
        return BackendError(f"upstream did not answer within {self.timeout:g} s", status=504,
                            code="upstream_timeout")

    def _connection_error(self, exc: aiohttp.ClientError, *,
                          mid_stream: bool = False) -> BackendError:
        where = "connection to upstream lost mid-stream" if mid_stream else \
            "upstream unreachable"
        return BackendError(self._scrub(f"{where}: {exc.__class__.__name__}: {exc}"),
                            status=502, code="upstream_error")

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


class _StreamState:
    """What one stream has seen so far: usage, choices begun and finished, [DONE]."""

    __slots__ = ("backend", "chat", "usage", "seen", "finished", "done")

    def __init__(self, backend: UpstreamBackend, *, chat: bool) -> None:
        self.backend = backend
        self.chat = chat
        self.usage: dict[str, Any] | None = None
        self.seen: set[int] = set()
        self.finished: set[int] = set()
        self.done = False

    def consume(self, payloads: list[bytes]) -> list[StreamDelta]:
        """Deltas carried by these event payloads; stops at ``[DONE]``."""
        deltas: list[StreamDelta] = []
        for payload in payloads:
            if payload == b"[DONE]":
                self.done = True
                break
            for delta, usage in self.backend._parse_chunk(payload, self.chat):
                if usage is not None:
                    self.usage = usage
                if delta is not None:
                    self.seen.add(delta.index)
                    if delta.finish_reason is not None:
                        self.finished.add(delta.index)
                    deltas.append(delta)
        return deltas
