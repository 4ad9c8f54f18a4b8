"""No request field switches the watermark off, and none is accepted and ignored.

Through the gateway with the official SDK, on the tiny random-weight model (the local
backend's real sampling path; ``test_embedded`` has the embedded-model run).
"""

from __future__ import annotations

import numpy as np
import openai
import pytest
import torch

from distillguard.backends.local import LocalBackend
from distillguard.backends.sampling import adjust_logits
from distillguard.backends.tiny import create_tiny_model

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]

# Every sampling field the gateway accepts, alone, then all of them together.
LEVERS = {
    "none": {},
    "temperature 0": {"temperature": 0},
    "temperature 0.2": {"temperature": 0.2},
    "temperature 2": {"temperature": 2.0},
    "top_p 0.01": {"top_p": 0.01},
    "top_p 0.3": {"top_p": 0.3},
    "n 3": {"n": 3},
    "seed": {"seed": 11},
    "stop": {"stop": ["zzzz-never"]},
    "presence_penalty": {"presence_penalty": 2.0},
    "frequency_penalty": {"frequency_penalty": -2.0},
    "logit_bias": {"logit_bias": {"30": -100, "13": 5}},
    "all at once": {"temperature": 0, "top_p": 0.01, "n": 2, "seed": 3, "stop": ["qqqq"],
                    "presence_penalty": 1.0, "frequency_penalty": 1.0,
                    "logit_bias": {"30": -100}},
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return create_tiny_model(tmp_path_factory.mktemp("tiny-levers") / "model")


@pytest.fixture
async def gateway(harness_factory, tiny_model):
    return await harness_factory(backend=LocalBackend(tiny_model, model_name="tiny",
                                                      max_batch=8))


@pytest.fixture(params=["exponential", "greenlist"])
async def marked(request, harness_factory, tiny_model):
    """A gateway under each scheme: the default (exponential) and the green list."""
    return await harness_factory(backend=LocalBackend(tiny_model, model_name="tiny",
                                                      max_batch=8),
                                 watermark_scheme=request.param)


async def _ask(client, **fields):
    fields.setdefault("max_tokens", 60)
    return await client.chat.completions.create(model="tiny", messages=PROMPT, **fields)


async def test_every_lever_alone_and_combined_stays_watermarked(marked):
    gateway = marked
    client = gateway.sdk()
    service = gateway.runtime.watermark
    for name, fields in LEVERS.items():
        # 160 tokens: at 100 a response of the tiny random model lands near 1e-4 about
        # once in ten runs (the evidence per token varies with what was sampled).
        reply = await _ask(client, max_tokens=160, **fields)
        assert len(reply.choices) == fields.get("n", 1), name
        for choice in reply.choices:
            found = service.detect_text(choice.message.content)
            assert found["p_value"] < 1e-4, (name, found["p_value"])
    events = gateway.events()
    assert len(events) == len(LEVERS)
    for name, event in zip(LEVERS, events, strict=True):
        tally = event.watermark["tokens"]
        # The event says where the watermark could act, and here it could almost always.
        assert tally["tokens"] == event.completion_tokens, name
        # Except where a negative frequency penalty feeds the green list's repeats back
        # into the logits: the tiny model then loops on near-certain tokens, where nothing
        # can act (one run measured 114 of 160 active), and the tally says so.
        floor = 0.5 if (name == "frequency_penalty"
                        and event.watermark["scheme"] == "greenlist") else 0.8
        assert tally["active"] >= floor * tally["tokens"], (name, tally)


async def test_plain_output_under_the_same_levers_is_not_flagged(harness_factory,
                                                                 tiny_model):
    plain = await harness_factory(backend=LocalBackend(tiny_model, model_name="tiny"),
                                  watermark_scheme="none")
    client = plain.sdk()
    texts = [(await _ask(client, **LEVERS[name])).choices[0].message.content
             for name in ("temperature 0", "top_p 0.3")]
    marked = await harness_factory(backend=LocalBackend(tiny_model, model_name="tiny"))
    for text in texts:
        assert marked.runtime.watermark.detect_text(text)["p_value"] > 1e-3


async def test_greedy_requests_are_a_repeatable_keyed_choice(marked):
    gateway = marked
    client = gateway.sdk()
    first = await _ask(client, temperature=0)
    again = await _ask(client, temperature=0)
    assert first.choices[0].message.content == again.choices[0].message.content
    # Raised to the floor: a keyed choice among near-tied tokens, not the plain argmax.
    [floor] = {e.watermark["params"]["min_temperature"] for e in gateway.events()}
    assert floor > 0


async def test_a_forced_answer_is_recorded_as_unwatermarked(marked, tiny_model):
    gateway = marked
    tokenizer = gateway.runtime.backend._batcher.tokenizer
    token = tokenizer.encode(" blue", add_special_tokens=False)[0]
    reply = await gateway.sdk().chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=20, logit_bias={str(token): 100})
    assert reply.choices[0].message.content == " blue" * 20
    [event] = gateway.events()
    # The client forced every token: nothing the watermark could act on, and the event
    # says so instead of claiming a watermark. The green list keyed all 20 draws. The
    # exponential scheme's free prefix (forced tokens carry no surprisal) ends at its
    # cap, 20 // 8 = 2 tokens; the race then keys 3 draws until the 4-token window is
    # all " blue", which repeats, and repeated windows are drawn unkeyed.
    keyed = 20 if event.watermark["scheme"] == "greenlist" else 3
    assert event.watermark["tokens"] == {"tokens": 20, "keyed": keyed, "active": 0}


async def test_logit_bias_bans_tokens_and_checks_their_ids(harness_factory, tiny_model):
    harness = await harness_factory(backend=LocalBackend(tiny_model, model_name="tiny"),
                                    watermark_scheme="none")
    client = harness.sdk()
    greedy = (await _ask(client, temperature=0, max_tokens=8)).choices[0].message.content
    tokenizer = harness.runtime.backend._batcher.tokenizer
    first = tokenizer.encode(greedy, add_special_tokens=False)[0]
    banned = await _ask(client, temperature=0, max_tokens=8, logit_bias={str(first): -100})
    assert tokenizer.encode(banned.choices[0].message.content,
                            add_special_tokens=False)[0] != first
    with pytest.raises(openai.BadRequestError) as err:
        await _ask(client, logit_bias={"99999999": 1})
    assert err.value.body["param"] == "logit_bias"


def test_penalties_lower_generated_tokens_once_and_per_occurrence():
    logits = torch.zeros(10)
    adjust_logits(logits, np.array([5, 5, 7]), presence=0.5, frequency=1.0,
                  bias=(torch.tensor([1]), torch.tensor([3.0])))
    assert logits[5] == pytest.approx(-2.5)
    assert logits[7] == pytest.approx(-1.5)
    assert logits[1] == pytest.approx(3.0)
    assert float(logits[[0, 2, 3, 4, 6, 8, 9]].abs().sum()) == 0.0


async def test_frequency_penalty_changes_a_repetitive_answer(harness_factory, tiny_model):
    harness = await harness_factory(backend=LocalBackend(tiny_model, model_name="tiny"),
                                    watermark_scheme="none")
    client = harness.sdk()
    tokenizer = harness.runtime.backend._batcher.tokenizer

    def distinct(reply):
        ids = tokenizer.encode(reply.choices[0].message.content, add_special_tokens=False)
        return len(set(ids)) / len(ids)

    plain = distinct(await _ask(client, temperature=0, max_tokens=60))
    penalised = distinct(await _ask(client, temperature=0, max_tokens=60,
                                    frequency_penalty=2.0))
    assert penalised > plain


@pytest.mark.parametrize(("endpoint", "field", "value"), [
    ("chat", "logprobs", True),
    ("chat", "top_logprobs", 3),
    ("chat", "tools", [{"type": "function", "function": {"name": "f"}}]),
    ("chat", "tool_choice", "auto"),
    ("chat", "response_format", {"type": "json_object"}),
    ("chat", "store", True),
    ("chat", "reasoning_effort", "high"),
    ("chat", "modalities", ["text", "audio"]),
    ("chat", "no_such_field", 1),
    ("chat", "presence_penalty", 3),
    ("chat", "logit_bias", {"5": 101}),
    ("chat", "stream_options", {"include_usage": True, "other": 1}),
    ("completion", "logprobs", 2),
    ("completion", "echo", True),
    ("completion", "best_of", 3),
    ("completion", "suffix", "end"),
    ("completion", "max_completion_tokens", 5),
])
async def test_unserved_fields_are_refused_with_a_400_naming_them(gateway, endpoint, field,
                                                                  value):
    client = gateway.sdk()
    extra = {field: value}
    if field == "stream_options":
        extra["stream"] = True
    with pytest.raises(openai.BadRequestError) as err:
        if endpoint == "chat":
            await client.chat.completions.create(model="tiny", messages=PROMPT,
                                                 max_tokens=4, extra_body=extra)
        else:
            await client.completions.create(model="tiny", prompt="Hello", max_tokens=4,
                                            extra_body=extra)
    assert err.value.status_code == 400
    assert err.value.body["param"] == ("stream_options" if field == "stream_options"
                                       else field)


async def test_fields_that_ask_for_nothing_pass(gateway):
    client = gateway.sdk()
    reply = await client.chat.completions.create(
        model="tiny", messages=PROMPT, max_tokens=4, logprobs=False, top_logprobs=0,
        response_format={"type": "text"}, store=False, tool_choice="none",
        service_tier="auto", safety_identifier="user-1", user="u")
    assert reply.choices[0].logprobs is None
    text = await client.completions.create(model="tiny", prompt="Hello", max_tokens=4,
                                           echo=False, best_of=1, logprobs=None)
    assert text.choices[0].text
