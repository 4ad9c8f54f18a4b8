"""The exponential scheme's free prefix: choices and retries of one prompt differ, the
watermark stays detectable, temperature 0 stays repeatable, and the tally is truthful.

Unit tests on a toy 'language model'; then through the gateway with the official SDK
on the tiny random-weight model (the local backend's real batcher).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillguard.backends.local import LocalBackend
from distillguard.backends.tiny import create_tiny_model
from distillguard.watermark import detector
from distillguard.watermark.keyed import KeyedPartition
from distillguard.watermark.schemes import _window_seen_before, get_scheme

VOCAB = 4000
START = (11, 12, 13, 14)


def toy_logits(context) -> torch.Tensor:
    """Logits that depend on the last two tokens, peaked enough to take several tokens
    to spend 10 bits (a uniform 4000-token row spends 12 in one)."""
    g = torch.Generator().manual_seed(int(context[-1]) * 7919 + int(context[-2]) * 31 + 1)
    return torch.randn(VOCAB, generator=g) * 4.0


def generate(row, seed: int, n: int = 120, greedy: bool = False) -> list[int]:
    ctx = list(START)
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ctx.append(row.sample_row(np.array(ctx), toy_logits(ctx), greedy, g))
    return ctx[len(START):]


def prefix_length(tokens: list[int], bits: float) -> int:
    """Tokens a row with ``bits`` draws unkeyed, recomputed from the toy model."""
    ctx, spent = list(START), 0.0
    for i, token in enumerate(tokens):
        if spent >= bits:
            return i
        logp = torch.log_softmax(toy_logits(ctx).double(), -1)[token]
        spent += -float(logp) / math.log(2)
        ctx.append(token)
    return len(tokens)


def test_choices_of_one_request_differ_and_stay_detectable():
    scheme = get_scheme("exponential")
    part = KeyedPartition(b"p" * 32, VOCAB)
    request = scheme.sampler(part)
    outs = [generate(request.for_row(True), seed=s) for s in range(5)]
    assert len({tuple(o) for o in outs}) == 5
    for out in outs:
        found = detector.detect(out, scheme, [detector.Candidate("k", 0, part)])
        assert found["p_value"] < 1e-6
    # Without the prefix the race alone decides: the same text whatever the generator.
    bare = get_scheme("exponential", free_bits=0).sampler(part)
    assert len({tuple(generate(bare.for_row(True), seed=s)) for s in range(5)}) == 1


def test_each_row_has_its_own_prefix_and_the_tally_counts_it_as_not_keyed():
    scheme = get_scheme("exponential", free_bits=10)
    part = KeyedPartition(b"q" * 32, VOCAB)
    request = scheme.sampler(part)
    rows = [request.for_row(True) for _ in range(3)]
    outs = [generate(row, seed=10 + i, n=80) for i, row in enumerate(rows)]
    assert all(row.tally is request.tally for row in rows)
    expected_keyed = 0
    for out in outs:
        free = prefix_length(out, 10.0)
        assert 2 <= free < 20  # several tokens at about 3-5 bits each
        ctx = list(START) + out
        expected_keyed += sum(
            not _window_seen_before(np.array(ctx[:len(START) + i]), scheme.context_width)
            for i in range(free, len(out)))
    assert request.tally["tokens"] == 3 * 80
    assert request.tally["keyed"] == expected_keyed


def test_an_answer_fetched_a_few_tokens_per_request_stays_watermarked():
    # An attacker who reads the code asks for a few tokens per request, sending what it
    # got back as the prompt: each request is a new row with a new free prefix. The
    # prefix may take only an eighth of a row's tokens (none below 8), so the answer
    # stays mostly keyed.
    scheme = get_scheme("exponential")
    part = KeyedPartition(b"c" * 32, VOCAB)
    g = torch.Generator().manual_seed(5)

    def chained(chunk: int, rows_know_their_length: bool) -> list[int]:
        ctx = list(START)
        while len(ctx) < len(START) + 96:
            row = scheme.sampler(part).for_row(
                True, chunk if rows_know_their_length else None)
            for _ in range(chunk):
                ctx.append(row.sample_row(np.array(ctx), toy_logits(ctx), False, g))
        return ctx[len(START):]

    def p_value(tokens: list[int]) -> float:
        return detector.detect(tokens, scheme, [detector.Candidate("k", 0, part)])["p_value"]

    assert p_value(chained(2, rows_know_their_length=False)) > 1e-3  # the attack, uncapped
    for chunk in (1, 4, 8):
        assert p_value(chained(chunk, rows_know_their_length=True)) < 1e-6
    row = scheme.sampler(part).for_row(True, 16)
    generate(row, seed=1, n=16)
    assert row.tally["tokens"] - row.tally["keyed"] <= 2  # at most 16 // 8 free


def test_a_row_that_asked_for_temperature_0_has_no_prefix():
    part = KeyedPartition(b"r" * 32, VOCAB)
    request = get_scheme("exponential").sampler(part)
    # Raised to the floor temperature (not greedy any more), yet raced from the start:
    # the same text whatever the generator, and every token keyed.
    outs = {tuple(generate(request.for_row(False), seed=s, n=60)) for s in range(4)}
    assert len(outs) == 1
    raced = get_scheme("exponential", free_bits=0).sampler(part)
    assert outs == {tuple(generate(raced, seed=0, n=60))}
    # And a greedy draw (floors at 0) skips the prefix of a sampled row too.
    greedy = {tuple(generate(request.for_row(True), seed=s, n=30, greedy=True))
              for s in range(3)}
    assert len(greedy) == 1


def test_free_bits_is_a_recorded_parameter_with_bounds(tmp_path):
    from distillguard.config import Settings
    from distillguard.watermark.service import scheme_from_settings

    scheme = get_scheme("exponential", free_bits=6)
    assert scheme.params["free_bits"] == 6.0
    assert get_scheme("exponential", **scheme.params).params == scheme.params
    with pytest.raises(ValueError, match="free_bits"):
        get_scheme("exponential", free_bits=-1)
    settings = Settings.load(env={}, data_dir=str(tmp_path), watermark_scheme="exponential",
                             watermark_free_bits="12")
    assert scheme_from_settings(settings).free_bits == 12.0


# ----- through the gateway ---------------------------------------------------------------

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return create_tiny_model(tmp_path_factory.mktemp("tiny-prefix") / "model")


async def _gateway(harness_factory, tiny_model, **settings):
    return await harness_factory(
        backend=LocalBackend(tiny_model, model_name="tiny", max_batch=8, threads=1),
        watermark_scheme="exponential", **settings)


async def _n4_and_retry(client, **fields) -> list[str]:
    texts = []
    for n in (4, 1):
        reply = await client.chat.completions.create(model="tiny", messages=PROMPT, n=n,
                                                     max_tokens=100, **fields)
        texts += [c.message.content for c in reply.choices]
    return texts


async def test_n_choices_and_a_retry_differ_and_are_all_watermarked(harness_factory,
                                                                    tiny_model):
    gateway = await _gateway(harness_factory, tiny_model)
    texts = await _n4_and_retry(gateway.sdk())
    assert len(set(texts)) == 5
    service = gateway.runtime.watermark
    for text in texts:
        assert service.detect_text(text)["p_value"] < 1e-4
    events = gateway.events()
    assert [e.watermark["params"]["free_bits"] for e in events] == [10.0, 10.0]
    for event, choices in zip(events, (4, 1), strict=True):
        tally = event.watermark["tokens"]
        assert tally["tokens"] == event.completion_tokens
        # Every choice's free prefix (at least one token) is counted as not keyed.
        assert tally["tokens"] - tally["keyed"] >= choices
        assert tally["keyed"] >= 0.8 * tally["tokens"]


async def test_without_the_prefix_choices_and_retries_are_copies(harness_factory,
                                                                 tiny_model):
    gateway = await _gateway(harness_factory, tiny_model, watermark_free_bits=0)
    assert len(set(await _n4_and_retry(gateway.sdk()))) == 1


async def test_temperature_0_stays_repeatable_and_fully_keyed(harness_factory, tiny_model):
    gateway = await _gateway(harness_factory, tiny_model)
    client = gateway.sdk()
    texts = [(await client.chat.completions.create(
        model="tiny", messages=PROMPT, temperature=0, max_tokens=100)).choices[0]
        .message.content for _ in range(2)]
    assert texts[0] == texts[1]
    assert gateway.runtime.watermark.detect_text(texts[0])["p_value"] < 1e-4
    tokenizer = gateway.runtime.backend._batcher.tokenizer
    ids = tokenizer.encode(texts[0], add_special_tokens=False)
    # The prompt as the batcher encodes it.
    prompt_ids = tokenizer(tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, tokenize=False), add_special_tokens=False)[
        "input_ids"]
    context = list(prompt_ids) + ids
    # No prefix: every token is keyed except those after a repeated window.
    repeated = sum(_window_seen_before(np.array(context[:len(prompt_ids) + i]), 4)
                   for i in range(len(ids)))
    for event in gateway.events():
        tally = event.watermark["tokens"]
        assert tally["keyed"] == tally["tokens"] - repeated


def test_the_default_scheme_is_exponential_with_a_free_prefix(tmp_path):
    from distillguard.config import Settings
    from distillguard.watermark.service import scheme_from_settings

    scheme = scheme_from_settings(Settings.load(env={}, data_dir=str(tmp_path)))
    assert scheme.name == "exponential" and scheme.free_bits == 10.0


async def test_a_seed_reproduces_the_prefix_and_so_the_answer(harness_factory, tiny_model):
    gateway = await _gateway(harness_factory, tiny_model)
    client = gateway.sdk()

    async def ask(seed):
        reply = await client.chat.completions.create(model="tiny", messages=PROMPT,
                                                     max_tokens=40, seed=seed)
        return reply.choices[0].message.content

    first = await ask(5)
    assert await ask(5) == first
    assert await ask(6) != first
