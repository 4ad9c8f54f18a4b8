"""Bad input gets the OpenAI error shape, the right 4xx status, and an event; never a 500."""

from __future__ import annotations

import orjson
import pytest

OK = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def _body(**changes):
    body = {**OK, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


CASES = [
    # (id, raw body, status, code, param)
    ("malformed json", b'{"model": "echo", "messages": [', 400, "invalid_json", None),
    ("invalid utf-8", b'{"model": "echo\xff\xfe", "messages": []}', 400, "invalid_json", None),
    ("not an object", b"[1, 2, 3]", 400, "invalid_json", None),
    ("empty body", b"", 400, None, None),
    ("missing messages", _body(messages=...), 400, "missing_required_parameter", "messages"),
    ("missing model", _body(model=...), 400, "missing_required_parameter", "model"),
    ("messages wrong type", _body(messages="hi"), 400, "invalid_type", "messages"),
    ("bad role", _body(messages=[{"role": "wizard", "content": "x"}]), 400, "invalid_value",
     "messages[0].role"),
    ("content wrong type", _body(messages=[{"role": "user", "content": 5}]), 400,
     "invalid_type", "messages[0].content"),
    ("temperature wrong type", _body(temperature="hot"), 400, "invalid_type", "temperature"),
    ("temperature out of range", _body(temperature=7), 400, "invalid_value", "temperature"),
    ("boolean max_tokens", _body(max_tokens=True), 400, "invalid_type", "max_tokens"),
    ("max_tokens over limit", _body(max_tokens=10**6), 400, "invalid_value", "max_tokens"),
    ("max_tokens zero", _body(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("n over limit", _body(n=99), 400, "invalid_value", "n"),
    ("stop wrong type", _body(stop=[1, 2]), 400, "invalid_type", "stop"),
    ("stream wrong type", _body(stream="yes"), 400, "invalid_type", "stream"),
    ("stream_options without stream", _body(stream_options={"include_usage": True}), 400,
     "invalid_value", "stream_options"),
    ("unknown model", _body(model="gpt-9"), 404, "model_not_found", "model"),
]


@pytest.mark.parametrize(("raw", "status", "code", "param"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_body(harness, raw, status, code, param):
    key = harness.key()
    async with harness.http(headers={"authorization": f"Bearer {key}",
                                     "content-type": "application/json"}) as http:
        response = await http.post("/v1/chat/completions", content=raw)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["code"] == code or code is None
    assert error["param"] == param
    [event] = harness.events()
    assert event.status == status
    assert event.error_type == error["type"]
    assert event.account == "alice"


async def test_body_over_the_size_limit(harness_factory):
    harness = await harness_factory(max_body_bytes=1000)
    key = harness.key()
    big = _body(messages=[{"role": "user", "content": "x" * 5000}])
    async with harness.http(headers={"authorization": f"Bearer {key}"}) as http:
        response = await http.post("/v1/chat/completions", content=big)
        # Without Content-Length (chunked), the limit holds while reading.
        async def chunks():
            for i in range(0, len(big), 100):
                yield big[i:i + 100]
        chunked = await http.post("/v1/chat/completions", content=chunks())
    for r in (response, chunked):
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
    assert [e.status for e in harness.events()] == [413, 413]


@pytest.mark.parametrize(("headers", "code"), [
    ({}, "missing_api_key"),
    ({"authorization": "Bearer sk-dg-not-a-real-key"}, "invalid_api_key"),
    ({"authorization": "Basic abc"}, "invalid_api_key"),
])
async def test_missing_or_bad_key(harness, headers, code):
    async with harness.http(headers=headers) as http:
        response = await http.post("/v1/chat/completions", content=_body())
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == code
    assert "sk-dg-not-a-real-key" not in error["message"]
    [event] = harness.events()
    assert event.status == 401
    assert event.account is None


async def test_unknown_path_and_wrong_method(harness):
    key = harness.key()
    async with harness.http(headers={"authorization": f"Bearer {key}"}) as http:
        missing = await http.get("/v1/embeddings-of-nothing")
        wrong = await http.get("/v1/chat/completions")
        outside = await http.get("/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"]["type"]
    assert outside.status_code == 404 and "error" in outside.json()
    assert sorted(e.status for e in harness.events()) == [404, 405]


async def test_backend_failure_is_a_clean_5xx(harness_factory):
    from distillguard.backends.base import BackendError
    from distillguard.backends.echo import EchoBackend

    class Down(EchoBackend):
        async def complete(self, request):
            raise BackendError("upstream answered 500", status=502, code="upstream_error")

    harness = await harness_factory(backend=Down(model_name="echo"))
    key = harness.key()
    async with harness.http(headers={"authorization": f"Bearer {key}"}) as http:
        response = await http.post("/v1/chat/completions", content=_body())
    assert response.status_code == 502
    assert response.json()["error"] == {"message": "upstream answered 500",
                                        "type": "server_error", "param": None,
                                        "code": "upstream_error"}
