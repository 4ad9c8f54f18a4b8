"""The OpenAI-compatible API as the official SDK sees it, with events and metrics."""

from __future__ import annotations

import time

import openai
import pytest

from distillguard.backends.base import BackendError, StreamDelta
from distillguard.backends.echo import EchoBackend


def wait_for_events(gateway, n: int, timeout: float = 10.0) -> list:
    """Events of a live server: the last one is queued just after the client's last byte."""
    deadline = time.monotonic() + timeout
    while True:
        gateway.writer.flush()
        events = list(gateway.store.iter_events())
        if len(events) >= n or time.monotonic() > deadline:
            return events
        time.sleep(0.02)


MESSAGES = [{"role": "user", "content": "alpha beta gamma delta epsilon"}]


async def test_chat_completion_through_the_sdk(harness):
    client = harness.sdk()
    reply = await client.chat.completions.create(model="echo", messages=MESSAGES,
                                                 max_tokens=3, user="u-1")
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 3
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 3
    assert reply.id.startswith("chatcmpl-")
    [event] = harness.events()
    assert event.status == 200
    assert event.account == "alice"
    assert event.key_id is not None
    assert event.endpoint == "/v1/chat/completions"
    assert event.model == "echo"
    assert event.params == {"max_tokens": 3, "user": "u-1"}
    assert "alpha beta" in event.prompt
    assert event.completion_tokens == 3
    assert event.client_addr == "203.0.113.7"
    assert event.user_agent and "OpenAI" in event.user_agent


async def test_n_choices_and_max_completion_tokens(harness):
    client = harness.sdk()
    reply = await client.chat.completions.create(model="echo", messages=MESSAGES, n=3,
                                                 max_completion_tokens=2)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens == 6


async def test_plain_completion_and_models(harness):
    client = harness.sdk()
    reply = await client.completions.create(model="echo", prompt="one two three four",
                                            max_tokens=2)
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    assert reply.usage.completion_tokens == 2
    models = await client.models.list()
    assert [m.id for m in models.data] == ["echo"]


async def test_prompt_retention_off_keeps_no_prompt(harness_factory):
    harness = await harness_factory(retain_prompts=False)
    await harness.sdk().chat.completions.create(model="echo", messages=MESSAGES)
    [event] = harness.events()
    assert event.prompt is None
    assert event.status == 200


async def test_revoked_key_fails_on_next_request_even_from_another_process(harness):
    from distillguard.telemetry.store import open_store

    key = harness.key("bob")
    client = harness.sdk(key)
    await client.models.list()
    # Revoke through a second store, as `distillguard keys revoke` would.
    other = open_store(harness.runtime.settings)
    [record] = other.list_keys("bob")
    assert other.revoke_key(record.key_id)
    other.close()
    with pytest.raises(openai.AuthenticationError) as info:
        await client.models.list()
    assert "revoked" in info.value.message


async def test_rate_limit_answers_429_with_retry_after(harness_factory):
    harness = await harness_factory(rate_limit_rpm=2)
    key = harness.key()
    async with harness.http(headers={"authorization": f"Bearer {key}"}) as http:
        assert (await http.get("/v1/models")).status_code == 200
        assert (await http.get("/v1/models")).status_code == 200
        refused = await http.get("/v1/models")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    # Another key has its own budget.
    async with harness.http(headers={"authorization": f"Bearer {harness.key('c')}"}) as http:
        assert (await http.get("/v1/models")).status_code == 200


async def test_metrics_and_health(harness):
    client = harness.sdk()
    await client.chat.completions.create(model="echo", messages=MESSAGES, max_tokens=2)
    async with harness.http() as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        await http.post("/v1/chat/completions", content=b"{")  # 401: no key
        text = (await http.get("/metrics")).text
    assert ('distillguard_requests_total{endpoint="/v1/chat/completions",status="200"} 1'
            in text)
    assert 'distillguard_tokens_total{type="completion"} 2' in text
    assert 'distillguard_errors_total{type="authentication_error"} 1' in text
    assert "distillguard_request_duration_seconds_bucket" in text


def test_streaming_over_a_real_server(live_server):
    url, gateway = live_server()
    _, key = gateway.store.create_key("streamer")
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    plain = client.chat.completions.create(model="echo", messages=MESSAGES, max_tokens=4)
    chunks = list(client.chat.completions.create(
        model="echo", messages=MESSAGES, max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].choices == []
    completion_chunks = list(client.completions.create(
        model="echo", prompt="a b c d e", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in completion_chunks) != ""
    streamed = wait_for_events(gateway, 3)
    assert [e.stream for e in streamed] == [False, True, True]
    streamed = streamed[1:]
    assert streamed[0].completion_tokens == 4


class FailsMidStream(EchoBackend):
    """Sends one delta, then fails as a dropped upstream would."""

    async def stream(self, request):
        yield StreamDelta(index=0, text="partial")
        raise BackendError("upstream closed the connection", status=502,
                           code="upstream_error")


def test_error_after_stream_started_ends_with_an_error_event(live_server):
    url, gateway = live_server(backend=FailsMidStream(model_name="echo"))
    _, key = gateway.store.create_key("s")
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="echo", messages=MESSAGES,
                                                    stream=True):
            received.append(chunk)
    assert "upstream closed the connection" in str(info.value)
    assert any(c.choices and c.choices[0].delta.content == "partial" for c in received)
    [event] = wait_for_events(gateway, 1)
    assert event.error_code == "upstream_error"
