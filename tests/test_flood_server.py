"""The HTTP server's flood limits: slow heads and bodies are cut, one address cannot
hold every connection, oversized heads are refused; the gateway stays answerable."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from distillguard.backends.echo import EchoBackend
from distillguard.gateway.app import build_app
from distillguard.gateway.limits import server_config
from distillguard.testing.server import free_port


@contextlib.contextmanager
def guarded_server(settings) -> Iterator[tuple[int, object]]:
    app = build_app(settings, backend=EchoBackend())
    port = free_port()
    config = server_config(app, settings, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield port, config.dg_guard, app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def slow_client(port: int, source: str = "127.0.0.2") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                    source_address=(source, 0))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the socket open."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_slow_heads_are_cut_and_healthz_answers_meanwhile(make_settings) -> None:
    settings = make_settings(http_header_timeout=1.0, http_max_connections_per_address=20,
                             detection=False)
    with guarded_server(settings) as (port, guard, _):
        slow = [slow_client(port) for _ in range(40)]
        # 20 of them were refused at accept time; the rest hold their connection.
        started = time.monotonic()
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert response.status_code == 200 and time.monotonic() - started < 1.0
        outcomes = [closed_by_server(s, within=3.0) for s in slow]
        for s in slow:
            s.close()
    assert all(o is not None for o in outcomes), "a slow head was never cut"
    assert sum(o.startswith(b"HTTP/1.1 408") for o in outcomes) == 20
    assert guard.refused_per_address == 20 and guard.header_timeouts == 20


def test_a_slow_body_gets_408(make_settings) -> None:
    settings = make_settings(http_body_timeout=0.5, detection=False)
    with guarded_server(settings) as (port, guard, app):
        _, key = app.state.runtime.store.create_key("slowpoke")
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + key.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        answer = closed_by_server(sock, within=3.0)
        sock.close()
    assert answer is not None and answer.startswith(b"HTTP/1.1 408")
    assert guard.body_timeouts == 1


@pytest.mark.parametrize("size", [40_000, 200_000])
def test_an_oversized_head_is_refused(make_settings, size: int) -> None:
    settings = make_settings(http_max_header_bytes=32_768, detection=False)
    with guarded_server(settings) as (port, _, _app):
        response = None
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"http://127.0.0.1:{port}/v1/models",
                                 headers={"User-Agent": "x" * size}, timeout=5)
        # Refused before any app code ran: 431, or the connection closed mid-send.
        assert response is None or response.status_code in (400, 431)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def metric(page: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", page, re.M)
    assert found is not None, f"{name} not on /metrics"
    return float(found.group(1))


def test_metrics_count_refused_and_open_connections_without_per_address_series(
        make_settings) -> None:
    settings = make_settings(http_max_connections_per_address=3, detection=False)
    with guarded_server(settings) as (port, guard, _):
        url = f"http://127.0.0.1:{port}/metrics"
        before = httpx.get(url, timeout=5).text
        assert metric(before, "distillguard_http_connections_refused_total") == 0
        series = {line.split(" ")[0] for line in before.splitlines()
                  if line and not line.startswith("#")}
        # Three addresses hold connections, the first beyond its cap of 3.
        held = [slow_client(port, source) for source in ("127.0.0.2",) * 5
                + ("127.0.0.3", "127.0.0.4")]
        deadline = time.monotonic() + 5
        while guard.refused_per_address < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        page = httpx.get(url, timeout=5).text
        for s in held:
            s.close()
    assert metric(page, "distillguard_http_connections_refused_total") == 2
    # 3 + 1 + 1 slow ones and the scrape's own connection.
    assert metric(page, "distillguard_http_connections_open") == 6
    assert metric(page, "distillguard_http_client_addresses") == 4
    assert metric(page, "distillguard_http_header_timeouts_total") == 0
    after = {line.split(" ")[0] for line in page.splitlines()
             if line and not line.startswith("#")}
    # New addresses add no series (only the scrape's own request count is new).
    assert {s for s in after - series if "127.0.0" in s} == set()
    assert {s for s in after - series if not s.startswith("distillguard_request")} == set()
