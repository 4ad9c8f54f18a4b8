"""The upstream backend against the fake OpenAI upstream, and the echo backend."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from distillguard.backends.base import (
    Backend,
    BackendError,
    GenerationRequest,
    StreamDelta,
    StreamEnd,
)
from distillguard.backends.echo import EchoBackend
from distillguard.backends.upstream import SSEParser, UpstreamBackend, parse_model_map
from distillguard.config import Settings, SettingsError
from distillguard.testing import FakeUpstream, FakeUpstreamProcess

REPLY = "hello from the fake upstream"
SECRET = "sk-upstream-secret-123"


def chat(model: str = "public", max_tokens: int = 16, **body_extra) -> GenerationRequest:
    messages = [{"role": "user", "content": "one two three"}]
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, **body_extra}
    return GenerationRequest(kind="chat", model=model, max_tokens=max_tokens,
                             messages=messages, body=body)


def completion(model: str = "public", max_tokens: int = 16) -> GenerationRequest:
    return GenerationRequest(kind="completion", model=model, max_tokens=max_tokens,
                             prompt="say something")


async def collect(backend, request) -> tuple[list[StreamDelta], StreamEnd]:
    items = [item async for item in backend.stream(request)]
    *deltas, end = items
    assert isinstance(end, StreamEnd)
    assert all(isinstance(d, StreamDelta) for d in deltas)
    return deltas, end


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(models=["fake-model", "other-model"], reply=REPLY) as upstream:
        yield upstream


@pytest.fixture
async def backend(fake) -> AsyncIterator[UpstreamBackend]:
    b = UpstreamBackend(fake.url, model_map={"public": "fake-model"}, timeout=2.0)
    await b.start()
    yield b
    await b.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- plain requests ----------------------------------------------------------------


async def test_chat_completion_is_parsed_and_model_mapped(backend, fake):
    result = await backend.complete(chat(temperature=0.3))
    [choice] = result.choices
    assert choice.text == REPLY
    assert choice.finish_reason == "stop"
    assert result.prompt_tokens == 3
    assert result.completion_tokens == choice.completion_tokens == 5
    assert fake.last_body["model"] == "fake-model"
    assert fake.last_body["stream"] is False
    assert fake.last_body["temperature"] == 0.3  # the client's own fields pass through
    assert isinstance(backend, Backend)
    assert backend.models() == ["public"]


async def test_text_completion_cut_at_max_tokens_says_length(backend, fake):
    result = await backend.complete(completion(max_tokens=2))
    assert result.choices[0].text == "hello from"
    assert result.choices[0].finish_reason == "length"
    assert fake.last_body["prompt"] == "say something"
    assert fake.last_body["max_tokens"] == 2


async def test_gateway_limits_override_the_client_body(backend, fake):
    request = chat(max_tokens=100000)
    request.max_tokens = 3
    request.n = 2
    result = await backend.complete(request)
    assert fake.last_body["max_tokens"] == 3
    assert fake.last_body["n"] == 2
    assert [c.index for c in result.choices] == [0, 1]
    assert result.completion_tokens == 6


async def test_api_key_is_sent_as_bearer(fake):
    fake.api_key = SECRET
    b = UpstreamBackend(fake.url, api_key=SECRET, model_map={"public": "fake-model"})
    await b.start()
    try:
        await b.complete(chat())
    finally:
        await b.close()
    assert fake.last_headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in repr(b)


# --- streams -----------------------------------------------------------------------


async def test_stream_yields_deltas_then_usage(backend, fake):
    deltas, end = await collect(backend, chat())
    assert "".join(d.text for d in deltas) == REPLY
    assert len([d for d in deltas if d.text]) == 5
    assert deltas[-1].finish_reason == "stop"
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert end == StreamEnd(prompt_tokens=3, completion_tokens=5)
    assert fake.last_body["stream"] is True
    assert fake.last_body["stream_options"] == {"include_usage": True}
    assert fake.last_body["model"] == "fake-model"


async def test_text_completion_stream_with_two_choices(backend):
    request = completion(max_tokens=3)
    request.n = 2
    deltas, end = await collect(backend, request)
    for index in (0, 1):
        mine = [d for d in deltas if d.index == index]
        assert "".join(d.text for d in mine) == "hello from the"
        assert mine[-1].finish_reason == "length"
    assert end.completion_tokens == 6


async def test_stream_events_cut_at_arbitrary_bytes(backend, fake):
    fake.fragment_bytes = 7
    deltas, end = await collect(backend, chat())
    assert "".join(d.text for d in deltas) == REPLY
    assert end.completion_tokens == 5


async def test_stream_without_upstream_usage_counts_zero(backend, fake):
    fake.include_usage = False
    deltas, end = await collect(backend, chat())
    assert "".join(d.text for d in deltas) == REPLY
    assert end == StreamEnd(prompt_tokens=0, completion_tokens=0)


async def test_streams_reuse_pooled_connections(backend, fake):
    for _ in range(5):
        await collect(backend, chat())
        await backend.complete(chat())
    assert fake.connections == 1


# --- errors ------------------------------------------------------------------------


async def test_upstream_500_becomes_502_naming_the_status(backend, fake):
    fake.fail_status = 500
    with pytest.raises(BackendError) as err:
        await backend.complete(chat())
    assert err.value.status == 502
    assert err.value.code == "upstream_error"
    assert "HTTP 500" in err.value.message
    with pytest.raises(BackendError) as err:
        await collect(backend, chat())
    assert err.value.status == 502


async def test_upstream_400_passes_through(backend, fake):
    fake.fail_status = 400
    fake.fail_code = "context_length_exceeded"
    fake.fail_message = "This model's maximum context length is 8 tokens."
    for call in (backend.complete(chat()), collect(backend, chat())):
        with pytest.raises(BackendError) as err:
            await call
        assert err.value.status == 400
        assert err.value.code == "context_length_exceeded"
        assert err.value.message == fake.fail_message


async def test_unknown_upstream_model_is_404_from_upstream(fake):
    b = UpstreamBackend(fake.url, model_map={"public": "missing-model"})
    await b.start()
    try:
        with pytest.raises(BackendError) as err:
            await b.complete(chat())
    finally:
        await b.close()
    assert err.value.status == 404
    assert err.value.code == "model_not_found"


async def test_rejected_upstream_key_is_502_and_never_echoed(fake):
    fake.api_key = "sk-the-right-one"
    b = UpstreamBackend(fake.url, api_key=SECRET, model_map={"public": "fake-model"})
    await b.start()
    try:
        with pytest.raises(BackendError) as err:
            await b.complete(chat())
        assert err.value.status == 502
        assert err.value.code == "upstream_auth_error"
        assert SECRET not in err.value.message
        # An upstream 5xx that quotes the key in its message is scrubbed too.
        fake.api_key = SECRET
        fake.fail_status = 503
        fake.fail_message = f"overloaded while serving {SECRET}"
        with pytest.raises(BackendError) as err:
            await b.complete(chat())
        assert SECRET not in err.value.message
        assert "HTTP 503" in err.value.message
    finally:
        await b.close()


async def test_connection_refused_is_502():
    b = UpstreamBackend(f"http://127.0.0.1:{closed_port()}/v1", model_map={"m": "m"},
                        timeout=2.0)
    await b.start()
    try:
        for call in (b.complete(chat("m")), collect(b, chat("m"))):
            with pytest.raises(BackendError) as err:
                await call
            assert err.value.status == 502
            assert err.value.code == "upstream_error"
            assert "unreachable" in err.value.message
    finally:
        await b.close()


async def test_slow_upstream_is_504(fake):
    fake.delay = 1.0
    b = UpstreamBackend(fake.url, model_map={"public": "fake-model"}, timeout=0.2)
    await b.start()
    try:
        for call in (b.complete(chat()), collect(b, chat())):
            with pytest.raises(BackendError) as err:
                await call
            assert err.value.status == 504
            assert err.value.code == "upstream_timeout"
    finally:
        await b.close()


async def test_stream_that_stalls_mid_way_raises_504_from_the_iterator(fake):
    fake.stall_mid_stream = 2.0
    b = UpstreamBackend(fake.url, model_map={"public": "fake-model"}, timeout=0.5)
    await b.start()
    got: list[StreamDelta] = []
    try:
        with pytest.raises(BackendError) as err:
            async for item in b.stream(chat()):
                got.append(item)  # type: ignore[arg-type]
    finally:
        await b.close()
    assert err.value.status == 504
    assert got and got[0].text == "hello"


async def test_dropped_stream_raises_from_the_iterator(backend, fake):
    fake.drop_mid_stream = True
    got: list[StreamDelta] = []
    with pytest.raises(BackendError) as err:
        async for item in backend.stream(chat()):
            got.append(item)  # type: ignore[arg-type]
    assert err.value.status == 502
    assert "mid-stream" in err.value.message
    assert got, "deltas before the drop reach the caller"
    assert not any(isinstance(i, StreamEnd) for i in got)
    # The pool recovers: the next request opens a fresh connection.
    fake.drop_mid_stream = False
    assert (await backend.complete(chat())).choices[0].text == REPLY


async def test_not_started_is_503():
    b = UpstreamBackend("http://127.0.0.1:9/v1", model_map={"m": "m"})
    with pytest.raises(BackendError) as err:
        await b.complete(chat("m"))
    assert err.value.status == 503


# --- models and settings -----------------------------------------------------------


async def test_models_are_discovered_when_no_map_is_given(fake):
    b = UpstreamBackend(fake.url)
    await b.start()
    try:
        assert b.models() == ["fake-model", "other-model"]
        result = await b.complete(chat("other-model"))
        assert fake.last_body["model"] == "other-model"
        assert result.choices[0].text == REPLY
    finally:
        await b.close()


async def test_discovery_failure_fails_start():
    b = UpstreamBackend(f"http://127.0.0.1:{closed_port()}/v1", timeout=1.0)
    with pytest.raises(BackendError) as err:
        await b.start()
    assert "cannot list models" in err.value.message


def test_model_map_parsing():
    assert parse_model_map("gpt=fake-model, small = tiny ,solo") == {
        "gpt": "fake-model", "small": "tiny", "solo": "solo"}
    assert parse_model_map("") == {}
    with pytest.raises(SettingsError, match="upstream_models"):
        parse_model_map("gpt=")


def test_from_settings():
    settings = Settings.load(env={}, upstream_url="http://example.invalid/v1/",
                             upstream_models="a=b", upstream_api_key=SECRET,
                             upstream_timeout=3.5, upstream_max_connections=7)
    b = UpstreamBackend.from_settings(settings)
    assert b.base_url == "http://example.invalid/v1"
    assert b.models() == ["a"]
    assert (b.timeout, b.max_connections) == (3.5, 7)
    with pytest.raises(SettingsError, match="upstream_url"):
        UpstreamBackend.from_settings(Settings.load(env={}))


async def test_fake_upstream_as_a_process():
    with FakeUpstreamProcess("--reply", "from a process") as proc:
        b = UpstreamBackend(proc.url)
        await b.start()
        try:
            result = await b.complete(chat("fake-model"))
        finally:
            await b.close()
    assert result.choices[0].text == "from a process"


# --- SSE parsing -------------------------------------------------------------------


def test_sse_parser_survives_any_cut():
    stream = (b": ping\r\n\r\ndata: {\"a\": 1}\r\n\r\nevent: x\nid: 3\ndata: line1\n"
              b"data:line2\n\ndata: [DONE]\n\n")
    whole = SSEParser().feed(stream)
    assert whole == [b'{"a": 1}', b"line1\nline2", b"[DONE]"]
    parser = SSEParser()
    one_by_one = [e for i in range(len(stream)) for e in parser.feed(stream[i:i + 1])]
    assert one_by_one == whole
    tail = SSEParser()
    assert tail.feed(b"data: last") == []
    assert tail.flush() == [b"last"]


# --- echo backend ------------------------------------------------------------------


async def test_echo_repeats_prompt_words_up_to_the_limits():
    echo = EchoBackend(tokens=4)
    assert isinstance(echo, Backend)
    request = GenerationRequest(kind="chat", model="echo", max_tokens=10, n=2, messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "alpha beta gamma"}])
    result = await echo.complete(request)
    assert [c.text for c in result.choices] == ["alpha beta gamma alpha",
                                                "beta gamma alpha beta"]
    assert [c.finish_reason for c in result.choices] == ["stop", "stop"]
    assert result.prompt_tokens == 5
    assert result.completion_tokens == 8
    request.max_tokens = 2
    short = await echo.complete(request)
    assert short.choices[0].text == "alpha beta"
    assert short.choices[0].finish_reason == "length"


async def test_echo_stream_matches_complete_and_honours_stop():
    echo = EchoBackend()
    request = GenerationRequest(kind="completion", model="echo", max_tokens=5,
                                prompt="one two three four", stop=["thr"])
    full = await echo.complete(request)
    assert full.choices[0].text == "one two"
    assert full.choices[0].finish_reason == "stop"
    deltas, end = await collect(echo, request)
    assert "".join(d.text for d in deltas) == "one two"
    assert deltas[-1].finish_reason == "stop"
    assert end == StreamEnd(prompt_tokens=4, completion_tokens=2)
