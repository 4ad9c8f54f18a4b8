"""The vLLM logits-processor adapter, with fake tensors and a stand-in vLLM module."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from distillguard.config import Settings
from distillguard.watermark import vllm_adapter
from distillguard.watermark.detector import Candidate, detect
from distillguard.watermark.keyed import KeyedPartition
from distillguard.watermark.schemes import get_scheme
from distillguard.watermark.service import WatermarkService

VOCAB = 3000


def fake_logits(prompt: list[int], output: list[int]) -> torch.Tensor:
    ctx = prompt + output
    g = torch.Generator().manual_seed(ctx[-1] * 977 + ctx[-2])
    return torch.randn(VOCAB, generator=g) * 2.5


def run_engine(processor, temperature: float, n: int = 200, seed: int = 0) -> list[int]:
    """What vLLM does per step: processor on raw logits, then temperature, then sample."""
    prompt, output = [3, 4, 5], []
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        logits = processor(prompt, output, fake_logits(prompt, output).clone())
        if temperature == 0:
            output.append(int(torch.argmax(logits)))
        else:
            probs = torch.softmax(logits / temperature, -1)
            output.append(int(torch.multinomial(probs, 1, generator=g)))
    return output


@pytest.mark.parametrize("name", ["greenlist", "exponential"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_request_processor_embeds_what_the_detector_finds(name, temperature):
    scheme = get_scheme(name)
    part = KeyedPartition(b"v" * 32, VOCAB)
    processor = vllm_adapter.RequestWatermark(scheme, part, temperature=temperature)
    tokens = run_engine(processor, temperature)
    found = detect(tokens, scheme, [Candidate("k", 0, part)])
    assert found["p_value"] < 1e-6


def test_green_bias_goes_on_the_raw_logits_whatever_the_temperature():
    # As in the local backend: the engine's temperature and top-p come after the bias,
    # so they act on the watermarked distribution and cannot undo it.
    scheme = get_scheme("greenlist", delta=2.0)
    part = KeyedPartition(b"w" * 32, VOCAB)
    raw = torch.zeros(VOCAB)
    for temperature in (0.5, 1.0, 1.5):
        proc = vllm_adapter.RequestWatermark(scheme, part, temperature=temperature)
        # Above temperature 1 the bias grows with it, so a hot request cannot dilute it.
        biased = proc([1, 2], [], raw.clone())
        assert set(np.round(biased.unique().numpy(), 5)) == {0.0, 2.0 * max(1.0, temperature)}


def test_processor_leaves_short_contexts_alone():
    scheme = get_scheme("greenlist", context_width=4)
    proc = vllm_adapter.RequestWatermark(scheme, KeyedPartition(b"x" * 32, VOCAB))
    logits = torch.randn(VOCAB)
    assert torch.equal(proc([1], [2], logits.clone()), logits)


def test_adapter_class_needs_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(vllm_adapter.VLLMUnavailable):
        vllm_adapter.vllm_logits_processor_class(object())


def test_adapter_class_watermarks_every_request_and_records_it(monkeypatch, tmp_path):
    class AdapterLogitsProcessor:  # the shape of vLLM's base class
        def __init__(self, vllm_config, device, is_pin_memory):
            self.device = device

    fake = types.ModuleType("vllm.v1.sample.logits_processor")
    fake.AdapterLogitsProcessor = AdapterLogitsProcessor
    for name in ("vllm", "vllm.v1", "vllm.v1.sample"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.v1.sample.logits_processor", fake)

    service = WatermarkService.from_settings(
        Settings.load(env={}, data_dir=str(tmp_path / "data")))
    cls = vllm_adapter.vllm_logits_processor_class(service)
    proc = cls(None, "cpu", False)
    assert proc.is_argmax_invariant() is False

    params = types.SimpleNamespace(temperature=0.7, extra_args={
        vllm_adapter.ACCOUNT_ARG: "acct-9", "watermark": False})
    request = proc.new_req_logits_processor(params)
    record = params.extra_args[vllm_adapter.RECORD_ARG]
    assert record["cohort"] == service.ring.active.cohort_of("acct-9")
    tokens = run_engine(request, 0.7)
    found = service.detect_tokens(tokens)
    assert found["p_value"] < 1e-6 and found["cohort"] == record["cohort"]

    # a request without extra_args is watermarked all the same
    bare = types.SimpleNamespace(temperature=1.0, extra_args=None)
    assert proc.new_req_logits_processor(bare) is not None


def test_vllm_processors_have_their_own_prefix():
    # The exponential scheme's free prefix lives per request processor: sampled runs
    # differ and are each watermarked; temperature 0 has no prefix and repeats.
    scheme = get_scheme("exponential")
    part = KeyedPartition(b"s" * 32, VOCAB)

    def engine(temperature: float, seed: int) -> list[int]:
        proc = vllm_adapter.RequestWatermark(scheme, part, temperature=temperature)
        return run_engine(proc, temperature, n=80, seed=seed)

    sampled = [engine(0.7, s) for s in range(4)]
    assert len({tuple(o) for o in sampled}) == 4
    for out in sampled:
        assert detect(out, scheme, [Candidate("k", 0, part)])["p_value"] < 1e-6
    assert len({tuple(engine(0.0, s)) for s in range(3)}) == 1


def test_vllm_prefix_is_capped_at_an_eighth_of_max_tokens():
    # An answer fetched 8 tokens per request, each request a new processor continuing
    # the text so far, at temperature 0.3: uncapped, most tokens are free-prefix tokens
    # (10 bits take several low-surprisal draws); capped at max_tokens // 8, at least 7
    # of every 8 are keyed.
    scheme = get_scheme("exponential")
    part = KeyedPartition(b"c" * 32, VOCAB)
    g = torch.Generator().manual_seed(5)

    def fetch(max_tokens: int | None) -> tuple[list[int], int]:
        prompt, output, free = [3, 4, 5], [], 0
        for _ in range(20):
            proc = vllm_adapter.RequestWatermark(scheme, part, temperature=0.3,
                                                 max_tokens=max_tokens)
            start = len(output)
            while len(output) < start + 8:
                raw = fake_logits(prompt, output)
                logits = proc(prompt + output[:start], output[start:], raw.clone())
                free += int(torch.equal(logits, raw))
                probs = torch.softmax(logits / 0.3, -1)
                output.append(int(torch.multinomial(probs, 1, generator=g)))
        return output, free

    capped, capped_free = fetch(8)
    assert capped_free <= 20  # one free token per 8-token request at most
    assert detect(capped, scheme, [Candidate("k", 0, part)])["p_value"] < 1e-6
    # Without the cap (no max_tokens) most tokens are free and the text is not found.
    uncapped, uncapped_free = fetch(None)
    assert uncapped_free > 100
    assert detect(uncapped, scheme, [Candidate("k", 0, part)])["p_value"] > 1e-3
