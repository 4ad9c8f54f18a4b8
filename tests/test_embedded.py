"""The local backend behind the gateway, watermarked, through the official SDK."""

from __future__ import annotations

import openai
import pytest

from distillguard.backends.local import LocalBackend
from distillguard.backends.tiny import create_tiny_model

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


async def test_outputs_are_watermarked_and_detected(harness_factory, tiny_model):
    backend = LocalBackend(tiny_model, model_name="tiny", max_batch=4)
    harness = await harness_factory(backend=backend)
    assert harness.runtime.watermark is not None
    client = harness.sdk()
    reply = await client.chat.completions.create(model="tiny", messages=PROMPT,
                                                 max_tokens=200, temperature=1.0, seed=3)
    text = reply.choices[0].message.content
    assert reply.usage.completion_tokens == 200
    [event] = harness.events()
    record = event.watermark
    assert record["scheme"] and record["key_id"]
    assert 0 <= record["cohort"] < record["cohorts"]
    assert "secret" not in str(record).lower()
    service = harness.runtime.watermark
    found = service.detect_text(text)
    assert found["p_value"] < 1e-6
    assert found["key_id"] == record["key_id"]
    assert found["cohort"] == record["cohort"]
    # Reproducing the exact watermark from the event alone.
    exact = service.detect_text(text, record=record)
    assert exact["p_value"] <= found["p_value"]


async def test_no_request_field_switches_the_watermark_off(harness_factory, tiny_model):
    harness = await harness_factory(backend=LocalBackend(tiny_model, model_name="tiny"))
    client = harness.sdk()
    # Fields that would ask for no watermark do not exist: they are refused by name.
    for field, value in (("watermark", False), ("watermark_delta", 0)):
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(model="tiny", messages=PROMPT,
                                                 max_tokens=8, extra_body={field: value})
        assert err.value.body["param"] == field
    reply = await client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=120, temperature=1.0, logit_bias={})
    assert harness.runtime.watermark.detect_text(
        reply.choices[0].message.content)["p_value"] < 1e-3
    assert harness.events()[-1].watermark is not None


async def test_plain_text_is_not_flagged(harness_factory, tiny_model):
    harness = await harness_factory(backend=LocalBackend(tiny_model, model_name="tiny"),
                                    watermark_scheme="none")
    assert harness.runtime.watermark.scheme is None
    reply = await harness.sdk().chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=200, temperature=1.0)
    [event] = harness.events()
    assert event.watermark is None
    text = reply.choices[0].message.content
    watermarked = await harness_factory(backend=LocalBackend(tiny_model, model_name="tiny"))
    # Same data folder, same keys: detection with the server's keys clears plain output.
    assert watermarked.runtime.watermark.detect_text(text)["p_value"] > 1e-3


@pytest.mark.slow
async def test_embedded_model_answers_through_the_sdk(harness_factory):
    # Unwatermarked, so that greedy decoding is the model's own argmax: with a watermark,
    # the greedy answer depends on the (random, per test) key.
    harness = await harness_factory(backend="local", model_name="smollm2-135m-instruct",
                                    watermark_scheme="none")
    client = harness.sdk()
    reply = await client.chat.completions.create(
        model="smollm2-135m-instruct", max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert 0 < reply.usage.completion_tokens <= 24
    assert reply.usage.prompt_tokens > 10


@pytest.mark.slow
async def test_embedded_model_low_entropy_levers_stay_watermarked(harness_factory):
    # The levers that used to give unwatermarked text (issue 10): each now samples from
    # the watermarked model at the floors, and its event says the watermark could act.
    harness = await harness_factory(backend="local", model_name="smollm2-135m-instruct")
    client = harness.sdk()
    service = harness.runtime.watermark
    levers = ({"temperature": 0}, {"top_p": 0.01}, {"temperature": 0.2})
    texts = []
    for fields in levers:
        # 200 tokens, not 100: the key is new in every run, and at temperature 0 some
        # keys left 100 tokens at p 4e-3..1.5e-2 (2 failures in 7 runs); over 12 keys,
        # 100 tokens gave 2e-15..1e-4 and 200 tokens 6e-28..4e-14.
        reply = await client.chat.completions.create(
            model="smollm2-135m-instruct", max_tokens=200, n=2, **fields,
            messages=[{"role": "user", "content": "Explain how tides work, in detail."}])
        text = "\n".join(c.message.content for c in reply.choices)
        texts.append(text)
        assert service.detect_text(text)["p_value"] < 1e-3, fields
    for event in harness.events():
        tally = event.watermark["tokens"]
        # Keyed: past the exponential scheme's free prefix (none at temperature 0).
        assert tally["keyed"] >= 0.5 * tally["tokens"] > 0
        assert tally["active"] >= 0.5 * tally["keyed"]
    assert service.detect_text("\n".join(texts))["p_value"] < 1e-8
