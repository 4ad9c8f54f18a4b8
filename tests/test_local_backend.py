"""The local backend on a tiny random-weight model (fast) and the embedded model (slow)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distillguard.backends.base import (
    Backend,
    BackendError,
    GenerationRequest,
    StreamDelta,
    StreamEnd,
)
from distillguard.backends.local import LocalBackend, create_tiny_model
from distillguard.backends.textstream import TextStream
from distillguard.backends.tiny import TINY_CONTEXT


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def backend(tiny_model_path: Path):
    # The worker thread is loop-agnostic (each request carries its loop), so one
    # backend serves the per-test event loops of this module. One torch thread: on a
    # shared 2-core machine, two threads make each tiny forward several times slower.
    b = LocalBackend(tiny_model_path, model_name="tiny", max_batch=16, threads=1)
    asyncio.run(b.start())
    yield b
    asyncio.run(b.close())


def chat(text: str = "Tell me a story.", **kw) -> GenerationRequest:
    kw.setdefault("max_tokens", 24)
    messages = [{"role": "user", "content": text}]
    return GenerationRequest(kind="chat", model="tiny", messages=messages, **kw)


def prompt(text: str, **kw) -> GenerationRequest:
    kw.setdefault("max_tokens", 24)
    return GenerationRequest(kind="completion", model="tiny", prompt=text, **kw)


async def collect(b: LocalBackend, request: GenerationRequest):
    """Stream a request; return per-choice deltas, finish reasons and the end item."""
    deltas: dict[int, list[str]] = {}
    reasons: dict[int, str] = {}
    end = None
    async for item in b.stream(request):
        assert end is None, "nothing may follow StreamEnd"
        if isinstance(item, StreamDelta):
            deltas.setdefault(item.index, []).append(item.text)
            if item.finish_reason:
                assert item.index not in reasons
                reasons[item.index] = item.finish_reason
        else:
            assert isinstance(item, StreamEnd)
            end = item
    assert end is not None
    return deltas, reasons, end


def test_is_a_backend(backend: LocalBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.models() == ["tiny"]


async def test_stream_and_complete_give_the_same_text_for_a_seed(backend: LocalBackend) -> None:
    request = chat(temperature=1.0, seed=11, max_tokens=30)
    completion = await backend.complete(request)
    deltas, reasons, end = await collect(backend, request)
    assert "".join(deltas[0]) == completion.choices[0].text != ""
    assert reasons[0] == completion.choices[0].finish_reason == "length"
    assert (end.prompt_tokens, end.completion_tokens) == (
        completion.prompt_tokens, completion.completion_tokens)
    other = await backend.complete(chat(temperature=1.0, seed=12, max_tokens=30))
    assert other.choices[0].text != completion.choices[0].text


async def test_n_choices_are_independent_and_counted(backend: LocalBackend) -> None:
    single = await backend.complete(prompt("The weather today", temperature=1.0, seed=3))
    many = await backend.complete(prompt("The weather today", temperature=1.0, seed=3, n=3))
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert len({c.text for c in many.choices}) == 3
    again = await backend.complete(prompt("The weather today", temperature=1.0, seed=3, n=3))
    assert [c.text for c in again.choices] == [c.text for c in many.choices]
    assert many.prompt_tokens == single.prompt_tokens  # counted once, as OpenAI does
    assert many.completion_tokens == sum(c.completion_tokens for c in many.choices) == 3 * 24
    deltas, reasons, end = await collect(backend, prompt("The weather today", temperature=1.0,
                                                         seed=3, n=3))
    assert ["".join(deltas[i]) for i in range(3)] == [c.text for c in many.choices]
    assert end.completion_tokens == many.completion_tokens


async def test_max_tokens_ends_with_length(backend: LocalBackend) -> None:
    completion = await backend.complete(chat(temperature=0.0, max_tokens=7))
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert choice.completion_tokens == completion.completion_tokens == 7


async def test_stop_string_across_token_boundary(backend: LocalBackend) -> None:
    request = chat("Name some fruit.", temperature=0.0, max_tokens=20)
    deltas, _, _ = await collect(backend, request)
    pieces = deltas[0]
    # Pick a stop string made of the end of one token's text and the start of the next.
    k = next(i for i in range(3, len(pieces) - 1)
             if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    full = "".join(pieces)
    expected = full[: full.index(stop)]

    completion = await backend.complete(chat("Name some fruit.", temperature=0.0, max_tokens=20,
                                             stop=["never appears", stop]))
    assert completion.choices[0].text == expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.completion_tokens == k + 2  # the tokens that completed the stop string

    deltas, reasons, end = await collect(backend, chat("Name some fruit.", temperature=0.0,
                                                       max_tokens=20, stop=[stop]))
    assert "".join(deltas[0]) == expected
    assert reasons[0] == "stop"
    assert end.completion_tokens == k + 2


async def test_concurrent_requests_equal_their_solo_results(backend: LocalBackend) -> None:
    # Greedy rows must match exactly. Sampled rows share the batch but are only checked
    # for their counts: batching changes logits by float noise, and a
    # multinomial draw can then land on the other side of a boundary now and then.
    requests = [
        prompt("word " * (i + 1), temperature=0.0 if i % 3 else 0.9, seed=100 + i,
               max_tokens=16 + 3 * i)
        for i in range(8)
    ]
    solo = [await backend.complete(r) for r in requests]
    together = await asyncio.gather(*(backend.complete(r) for r in requests))
    greedy = [i for i in range(8) if i % 3]
    assert [together[i].choices[0].text for i in greedy] == [solo[i].choices[0].text
                                                             for i in greedy]
    assert [c.completion_tokens for c in together] == [16 + 3 * i for i in range(8)]
    assert [c.prompt_tokens for c in together] == [c.prompt_tokens for c in solo]


async def test_a_request_joins_a_running_batch(backend: LocalBackend) -> None:
    long = asyncio.ensure_future(backend.complete(chat(temperature=0.0, max_tokens=400)))
    await asyncio.sleep(0.3)  # the long request is decoding by now
    short = await asyncio.wait_for(backend.complete(chat("Hi", temperature=0.0, max_tokens=5)),
                                   timeout=30)
    assert short.completion_tokens == 5
    assert not long.done(), "the short request waited for the long one to finish"
    await long


async def test_event_loop_stays_responsive(backend: LocalBackend) -> None:
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    started = time.perf_counter()
    await asyncio.gather(*(backend.complete(chat(str(i), temperature=0.0, max_tokens=300, n=2))
                           for i in range(4)))
    elapsed = time.perf_counter() - started
    tick.cancel()
    assert elapsed > 0.5, "generation too short to tell"  # 300 steps of 8 rows
    assert len(gaps) > 20
    assert max(gaps) < 0.25, f"event loop blocked for {max(gaps):.3f} s"


async def test_closed_stream_frees_its_row(tiny_model_path: Path) -> None:
    b = LocalBackend(tiny_model_path, model_name="tiny", max_batch=1, threads=1)
    await b.start()
    try:
        stream = b.stream(chat(temperature=0.0, max_tokens=1900))
        async for _ in stream:
            break
        await stream.aclose()
        # With one row in the batch, this only runs once the closed stream's row is gone;
        # otherwise it would wait for ~1900 more tokens.
        short = await asyncio.wait_for(b.complete(chat("Hi", temperature=0.0, max_tokens=3)),
                                       timeout=3)
        assert short.completion_tokens == 3
    finally:
        await b.close()


async def test_close_fails_pending_requests_with_503(tiny_model_path: Path) -> None:
    b = LocalBackend(tiny_model_path, model_name="tiny", max_batch=2, threads=1)
    await b.start()
    running = asyncio.ensure_future(b.complete(chat(temperature=0.0, max_tokens=1900)))
    waiting = asyncio.ensure_future(b.complete(chat(temperature=0.0, max_tokens=1900, n=2)))
    await asyncio.sleep(0.2)
    await b.close()
    for task in (running, waiting):
        with pytest.raises(BackendError) as err:
            await task
        assert err.value.status == 503
    with pytest.raises(BackendError) as err:
        await b.complete(chat())
    assert err.value.status == 503


async def test_prompt_too_long_is_a_400(backend: LocalBackend) -> None:
    words = "hello " * (TINY_CONTEXT + 10)
    with pytest.raises(BackendError) as err:
        await backend.complete(chat(words))
    assert (err.value.status, err.value.code, err.value.param) == (
        400, "context_length_exceeded", "messages")
    with pytest.raises(BackendError) as err:
        async for _ in backend.stream(prompt(words)):
            pass
    assert (err.value.status, err.value.code, err.value.param) == (
        400, "context_length_exceeded", "prompt")


async def test_content_parts_are_joined_text(backend: LocalBackend) -> None:
    plain = await backend.complete(chat("Say hi", temperature=0.0))
    parts = GenerationRequest(kind="chat", model="tiny", max_tokens=24, temperature=0.0,
                              messages=[{"role": "user",
                                         "content": [{"type": "text", "text": "Say hi"}]}])
    assert (await backend.complete(parts)).choices[0].text == plain.choices[0].text
    image = GenerationRequest(kind="chat", model="tiny", max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(BackendError) as err:
        await backend.complete(image)
    assert err.value.status == 400


async def test_tiny_top_p_is_greedy(backend: LocalBackend) -> None:
    greedy = await backend.complete(chat(temperature=0.0))
    nucleus = await backend.complete(chat(temperature=1.5, top_p=1e-6, seed=1))
    assert nucleus.choices[0].text == greedy.choices[0].text


class ConstantWatermark:
    """A RowSampler that records what it is given and always picks one token."""

    tally = None

    def __init__(self, token: int) -> None:
        self.token = token
        self.calls: list[tuple[np.ndarray, torch.Tensor, bool]] = []
        self.rows: list[bool] = []

    def effective(self, temperature, top_p):
        return temperature, top_p

    def for_row(self, sampled, max_tokens=None):
        self.rows.append(sampled)
        return self

    def bias_row(self, context, logits, scale=1.0):
        return logits

    def draw_row(self, context, logits, greedy, generator, reference=None):
        self.calls.append((context.copy(), logits, greedy))
        return self.token

    def sample_row(self, context, logits, greedy, generator):
        return self.draw_row(context, logits, greedy, generator)


async def test_every_token_goes_through_the_watermark_sampler(backend: LocalBackend) -> None:
    tokenizer = backend._batcher.tokenizer
    token = tokenizer.encode(" blue", add_special_tokens=False)[0]
    mark = ConstantWatermark(token)
    completion = await backend.complete(chat(temperature=0.7, max_tokens=5, watermark=mark))
    assert completion.choices[0].text == " blue" * 5
    assert len(mark.calls) == 5
    context, logits, greedy = mark.calls[-1]
    assert context.dtype == np.int64
    assert context.size == completion.prompt_tokens + 4
    assert list(context[-4:]) == [token] * 4
    assert logits.dtype == torch.float32 and logits.shape == (len(tokenizer),)
    assert greedy is False
    assert mark.rows == [True]  # one row sampler per choice, told the request samples
    mark = ConstantWatermark(token)
    await backend.complete(chat(temperature=0, n=3, max_tokens=2, watermark=mark))
    assert mark.rows == [False] * 3


def test_text_stream_holds_back_a_possible_stop_string() -> None:
    def decode(ids):
        return "".join(chr(i) for i in ids)

    text = TextStream(decode, stop=["cde"])
    assert [text.push(ord(c)) for c in "abcd"] == ["a", "b", "", ""]
    assert text.push(ord("x")) == "cdx"  # not a stop string after all
    assert text.push(ord("c")) == ""
    assert text.push(ord("d")) == ""
    assert text.push(ord("e")) == ""
    assert text.stopped and text.text == "abcdx"
    assert text.finish() == ""


def test_text_stream_waits_for_a_whole_character() -> None:
    table = {1: b"a", 2: b"\xc3", 3: b"\xa9", 4: b"b"}

    def decode(ids):
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    text = TextStream(decode)
    assert [text.push(i) for i in (1, 2, 3, 4)] == ["a", "", "é", "b"]
    assert text.finish() == ""


@pytest.mark.slow
async def test_embedded_model_answers_a_chat_prompt() -> None:
    b = LocalBackend(None, model_name="smollm2-135m-instruct")
    await b.start()
    try:
        completion = await b.complete(GenerationRequest(
            kind="chat", model="smollm2-135m-instruct", max_tokens=64, temperature=0.0,
            messages=[{"role": "user", "content": "What is the capital of France?"}]))
    finally:
        await b.close()
    choice = completion.choices[0]
    assert choice.text.strip()
    assert "Paris" in choice.text
    expected = "length" if choice.completion_tokens == 64 else "stop"
    assert choice.finish_reason == expected
