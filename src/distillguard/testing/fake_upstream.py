"""A fast fake OpenAI-compatible server for tests and benchmarks.

It answers ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``
(plain or streaming) at once, with a deterministic reply: the words of ``reply``, cut at
the request's ``max_tokens``, one stream event per word, and usage counted in whitespace
words.

Two ways to run it:

* ``FakeUpstream`` (a context manager) serves from a background thread with its own
  event loop; tests turn its knobs (``fail_status``, ``delay``, ``chunk_delay``,
  ``drop_mid_stream``, ``include_usage``, ``fragment_bytes``) between requests and read
  ``last_body`` / ``last_headers``.
* ``python -m distillguard.testing.fake_upstream --port N`` (or ``FakeUpstreamProcess``)
  serves from its own process, so that a benchmark's gateway does not share a GIL with it.

Why not aiohttp.web or http.server: the fake must be much faster than the gateway it
measures, so it is a bare asyncio protocol on ``httptools`` (the parser uvicorn uses),
with no per-request task unless a delay asks for one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, cast

import httptools
import orjson

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}


def _count_words(body: dict[str, Any]) -> int:
    """Prompt size in whitespace words (the fake's notion of a token)."""
    if "messages" in body:
        total = 0
        for message in body.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                total += len(content.split())
            elif isinstance(content, list):
                total += sum(len(str(part.get("text", "")).split())
                             for part in content if isinstance(part, dict))
        return total
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = " ".join(str(p) for p in prompt)
    return len(str(prompt).split())


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}})


class FakeUpstream:
    """An OpenAI-compatible server on a free 127.0.0.1 port, served from a thread.

    Knobs (plain attributes, read on every request):

    ``fail_status``: answer every POST with this HTTP status and an OpenAI error whose
    message is ``fail_message`` and code ``fail_code``. ``delay``: seconds to wait before
    answering a POST. ``chunk_delay``: seconds between stream events.
    ``stall_mid_stream``: seconds to pause after half the stream events.
    ``drop_mid_stream``: close the connection after half the stream events.
    ``include_usage``: send usage
    (in the response, and as a last stream chunk when the request asks for it).
    ``fragment_bytes``: split each stream into pieces of this many bytes, sent apart,
    so that a client sees events cut at arbitrary places.

    ``last_body``, ``last_headers`` (lower-case names), ``requests`` (completion requests)
    and ``connections`` (TCP connections accepted) record what came in.
    """

    def __init__(self, *, models: tuple[str, ...] | list[str] = ("fake-model",),
                 reply: str = "hello from the fake upstream", api_key: str = "",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.models = list(models)
        self.reply = reply
        self.api_key = api_key
        self.host = host
        self.port = port
        self.fail_status: int | None = None
        self.fail_message = "fake upstream failure"
        self.fail_code = "fake_failure"
        self.delay = 0.0
        self.chunk_delay = 0.0
        self.drop_mid_stream = False
        self.stall_mid_stream = 0.0
        self.include_usage = True
        self.fragment_bytes = 0
        self.last_body: dict[str, Any] | None = None
        self.last_headers: dict[str, str] = {}
        self.requests = 0
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Connection] = set()

    @property
    def url(self) -> str:
        """Base URL including ``/v1``, as an OpenAI client expects it."""
        return f"http://{self.host}:{self.port}/v1"

    # --- running -------------------------------------------------------------------

    async def serve(self, sock: socket.socket | None = None) -> asyncio.AbstractServer:
        """Start listening on the running loop (``sock`` if given, else host:port)."""
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = _listen_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        # A deep backlog: the default of 100 overflows under benchmark bursts (MEASURED.md).
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock,
                                                backlog=1024)
        return self._server

    def start(self) -> FakeUpstream:
        """Serve from a background thread; returns once the port accepts connections."""
        sock = _listen_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = _new_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve(sock))
            except BaseException as exc:  # reported to the starting thread below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.close()
        # Slow streams still sending: end them rather than leave them pending.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def stop(self) -> None:
        """Stop the background thread (closes open connections)."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- answering -----------------------------------------------------------------

    def _respond(self, conn: _Connection, method: bytes, path: str,
                 headers: dict[str, str], raw_body: bytes) -> None:
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            given = headers.get("authorization", "").removeprefix("Bearer ")
            # Echo the key it got, as OpenAI does, so tests can check nobody repeats it.
            conn.send_json(401, _error_body(f"Incorrect API key provided: {given}",
                                            "invalid_request_error", "invalid_api_key"))
            return
        if method == b"GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                    for m in self.models]
            conn.send_json(200, orjson.dumps({"object": "list", "data": data}))
            return
        if method != b"POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            conn.send_json(404, _error_body(f"no route {path}", "invalid_request_error",
                                            "not_found"))
            return
        self.requests += 1
        self.last_headers = headers
        try:
            body = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            conn.send_json(400, _error_body("body is not JSON", "invalid_request_error",
                                            "invalid_json"))
            return
        self.last_body = body
        if self.delay > 0:
            asyncio.get_running_loop().call_later(self.delay, self._answer, conn, path, body)
        else:
            self._answer(conn, path, body)

    def _answer(self, conn: _Connection, path: str, body: dict[str, Any]) -> None:
        if conn.closed:
            return
        if self.fail_status is not None:
            type_ = "server_error" if self.fail_status >= 500 else "invalid_request_error"
            conn.send_json(self.fail_status, _error_body(self.fail_message, type_,
                                                         self.fail_code))
            return
        model = body.get("model")
        if model not in self.models:
            conn.send_json(404, _error_body(f"The model `{model}` does not exist",
                                            "invalid_request_error", "model_not_found",
                                            "model"))
            return
        chat = path == "/v1/chat/completions"
        words = self.reply.split()
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or len(words)
        pieces = words[:limit]
        finish = "length" if len(words) > limit else "stop"
        n = int(body.get("n") or 1)
        usage = {"prompt_tokens": _count_words(body), "completion_tokens": n * len(pieces),
                 "total_tokens": _count_words(body) + n * len(pieces)}
        if body.get("stream"):
            want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _stream_events(chat, str(model), pieces, finish, n,
                                    usage if want_usage and self.include_usage else None)
            half = max(1, len(events) // 2)
            if self.drop_mid_stream:
                events = events[:half]
            conn.send_stream(events, drop=self.drop_mid_stream, chunk_delay=self.chunk_delay,
                             fragment=self.fragment_bytes,
                             stall=(half, self.stall_mid_stream))
            return
        text = " ".join(pieces)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text},
                        "logprobs": None, "finish_reason": finish} for i in range(n)]
            obj = "chat.completion"
        else:
            choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                       for i in range(n)]
            obj = "text_completion"
        response: dict[str, Any] = {"id": "fake-1", "object": obj, "created": 0,
                                    "model": model, "choices": choices}
        if self.include_usage:
            response["usage"] = usage
        conn.send_json(200, orjson.dumps(response))


def _stream_events(chat: bool, model: str, pieces: list[str], finish: str, n: int,
                   usage: dict[str, int] | None) -> list[bytes]:
    """The SSE events of one streamed answer, ``[DONE]`` included."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {"id": "fake-1", "object": obj, "created": 0, "model": model,
                   "choices": choices, **extra}
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    # A comment first: real servers send keep-alives that a client must skip.
    events = [b": keep-alive\n\n"]
    if chat:
        events.append(event([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None} for i in range(n)]))
    for j, word in enumerate(pieces):
        text = word if j == 0 else " " + word
        for i in range(n):
            piece: dict[str, Any] = {"delta": {"content": text}} if chat else {"text": text}
            events.append(event([{"index": i, **piece, "finish_reason": None}]))
    for i in range(n):
        end: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
        events.append(event([{"index": i, **end, "finish_reason": finish}]))
    if usage is not None:
        events.append(event([], usage=usage))
    events.append(b"data: [DONE]\n\n")
    return events


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, parsed by httptools."""

    def __init__(self, app: FakeUpstream) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        self.app._conns.add(self)
        self.app.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.app._conns.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.close()
        except httptools.HttpParserError:
            self.send_json(400, _error_body("malformed HTTP request", "invalid_request_error",
                                            "bad_request"))
            self.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        self.app._respond(self, self.parser.get_method(), path, self._headers,
                          b"".join(self._body))

    # writing
    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _head(self, status: int, content_type: bytes, extra: bytes) -> bytes:
        reason = _REASONS.get(status, "Status").encode()
        connection = b"" if self.keep_alive else b"Connection: close\r\n"
        return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s%s\r\n"
                % (status, reason, content_type, extra, connection))

    def send_json(self, status: int, body: bytes) -> None:
        if self.closed or self.transport is None:
            return
        head = self._head(status, b"application/json",
                          b"Content-Length: %d\r\n" % len(body))
        self.transport.write(head + body)
        if not self.keep_alive:
            self.close()

    def send_stream(self, events: list[bytes], *, drop: bool, chunk_delay: float,
                    fragment: int, stall: tuple[int, float] = (0, 0.0)) -> None:
        if self.closed or self.transport is None:
            return
        head = self._head(200, b"text/event-stream",
                          b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n")
        if fragment > 0:
            data = b"".join(events)
            pieces = [data[i:i + fragment] for i in range(0, len(data), fragment)]
        else:
            pieces = events
        chunks = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces]
        end = b"" if drop else b"0\r\n\r\n"
        if chunk_delay <= 0 and fragment <= 0 and stall[1] <= 0:
            self.transport.write(head + b"".join(chunks) + end)
            self._after_stream(drop)
            return
        pauses = [chunk_delay if chunk_delay > 0 or fragment > 0 else 0.0] * len(chunks)
        if fragment > 0:
            pauses = [max(p, 0.002) for p in pauses]
        if stall[1] > 0 and fragment <= 0 and stall[0] <= len(pauses):
            pauses[stall[0] - 1] += stall[1]
        asyncio.get_running_loop().create_task(self._send_slowly(head, chunks, end, drop,
                                                                 pauses))

    async def _send_slowly(self, head: bytes, chunks: list[bytes], end: bytes, drop: bool,
                           pauses: list[float]) -> None:
        assert self.transport is not None
        self.transport.write(head)
        for chunk, pause in zip(chunks, pauses, strict=True):
            if self.closed:
                return
            self.transport.write(chunk)
            if pause > 0:
                await asyncio.sleep(pause)
        if not self.closed:
            self.transport.write(end)
            self._after_stream(drop)

    def _after_stream(self, drop: bool) -> None:
        # Closing after a partial chunked body is what a crashed upstream looks like.
        if drop or not self.keep_alive:
            self.close()


def _listen_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class FakeUpstreamProcess:
    """``python -m distillguard.testing.fake_upstream`` in a child process.

    Use it where the fake must not share a GIL with the code under test (benchmarks).
    ``args`` are extra command-line flags (``--reply``, ``--models``, ``--delay``).
    """

    def __init__(self, *args: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.args = list(args)
        self.host = host
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeUpstreamProcess:
        cmd = [sys.executable, "-m", "distillguard.testing.fake_upstream",
               "--host", self.host, "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> FakeUpstreamProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve a fake upstream until SIGTERM or SIGINT; prints ``listening on URL`` first."""
    parser = argparse.ArgumentParser(prog="python -m distillguard.testing.fake_upstream",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--reply", default="hello from the fake upstream",
                        help="words of every answer")
    parser.add_argument("--models", default="fake-model", help="comma-separated names")
    parser.add_argument("--api-key", default="", help="require this bearer key")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering")
    args = parser.parse_args(argv)
    fake = FakeUpstream(models=[m for m in args.models.split(",") if m], reply=args.reply,
                        api_key=args.api_key, host=args.host, port=args.port)
    fake.delay = args.delay
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(fake.serve())
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"listening on {fake.url}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_forever()
    loop.run_until_complete(fake._shutdown())
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
