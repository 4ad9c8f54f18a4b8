"""Client addresses: X-Forwarded-For only from trusted proxies, right-most untrusted
entry, non-addresses recorded as invalid, and never honoured through uvicorn by default."""

from __future__ import annotations

import httpx
import pytest

from distillguard.detection.campaigns import network_prefix as _prefix
from distillguard.gateway.app import build_app
from distillguard.gateway.clientaddr import INVALID, ClientAddress
from distillguard.testing.server import serve_in_thread


@pytest.mark.parametrize(("trust", "proxies", "peer", "header", "want"), [
    (False, "", "203.0.113.5", "6.6.6.6", "203.0.113.5"),
    (True, "", "10.0.0.2", "6.6.6.6, 203.0.113.9", "203.0.113.9"),
    (True, "10.0.0.0/8", "10.0.0.2", "6.6.6.6, 203.0.113.9, 10.0.0.7", "203.0.113.9"),
    (True, "10.0.0.0/8", "198.51.100.1", "6.6.6.6", "198.51.100.1"),  # peer not a proxy
    (True, "", "10.0.0.2", "not-an-ip", INVALID),
    (True, "", "10.0.0.2", "203.0.113.9, ", INVALID),
    (True, "", "10.0.0.2", "[2001:db8::1]:443", "2001:db8::1"),
    (True, "", "10.0.0.2", "203.0.113.9:5555", "203.0.113.9"),
    (True, "", "10.0.0.2", "::ffff:203.0.113.9", "203.0.113.9"),
    (True, "10.0.0.0/8", "10.0.0.2", "10.0.0.3", "10.0.0.2"),  # all hops ours
])
def test_resolve(trust, proxies, peer, header, want):
    assert ClientAddress(trust, proxies).resolve(peer, header) == want


def test_a_bad_trusted_proxy_entry_is_named():
    with pytest.raises(ValueError, match="'nope'"):
        ClientAddress(True, "10.0.0.0/8, nope")


def test_detection_groups_by_prefix_and_ignores_invalid():
    assert _prefix("203.0.113.77") == "203.0.113.0/24"
    assert _prefix("2001:db8:abcd::1") == "2001:db8:abcd::/48"
    assert _prefix("2001:db8::1") == "2001:db8::/48"
    assert _prefix(INVALID) is None and _prefix("not-an-ip") is None


@pytest.mark.parametrize("trust", [False, True])
def test_through_uvicorn_the_header_counts_only_when_trusted(make_settings, trust):
    app = build_app(make_settings(trust_forwarded_for=trust))
    with serve_in_thread(app) as url:
        gateway = app.state.runtime
        _, key = gateway.store.create_key("alice")
        for addr in ("6.6.6.6, 203.0.113.9", "not-an-ip"):
            r = httpx.post(f"{url}/v1/chat/completions", headers={
                "Authorization": f"Bearer {key}", "X-Forwarded-For": addr},
                json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
        gateway.writer.flush()
        addrs = [e.client_addr for e in gateway.store.iter_events()]
    assert addrs == (["203.0.113.9", INVALID] if trust else ["127.0.0.1", "127.0.0.1"])
