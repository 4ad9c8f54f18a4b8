"""The frontier part of ``bench/watermark.py``: its QA set, grader and the detectors it
runs for SynthID-Text and transformers' green list (on the tiny random-weight model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from distillguard.backends.tiny import create_tiny_model

BENCH = Path(__file__).resolve().parents[1] / "bench" / "watermark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_watermark", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = create_tiny_model(tmp_path_factory.mktemp("tiny-frontier") / "model")
    return AutoTokenizer.from_pretrained(str(path)), AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32).eval()


def test_qa_set_is_fixed_and_graded_strictly(bench):
    items = bench.load_factual_qa()
    assert len(items) == 70
    assert {i["kind"] for i in items[:40]} == {"capital"}
    assert {i["kind"] for i in items[40:]} == {"symbol"}
    subset = bench.load_factual_qa(35)
    assert len(subset) == 35 and {i["kind"] for i in subset} == {"capital", "symbol"}
    he = next(i for i in items if i["answer"] == "He")
    assert bench.qa_correct(he, "The chemical symbol of helium is He.")
    assert not bench.qa_correct(he, "The chemical symbol of helium is Helium.")
    assert not bench.qa_correct(he, "It is HE.")
    paris = next(i for i in items if i["answer"] == "Paris")
    assert bench.qa_correct(paris, "the capital of France is PARIS")
    assert not bench.qa_correct(paris, "Parisian food")
    bogota = {"kind": "capital", "answer": "Bogota"}
    assert bench.qa_correct(bogota, "The capital of Colombia is Bogotá.")


def test_transformers_detectors_tell_their_watermark_apart(bench, tiny):
    from transformers import WatermarkDetector

    tok, model = tiny
    prompts = ["Write a long story about a lighthouse keeper."]
    plain = bench.hf_generate(model, tok, prompts, 16, 0.7, 1)[0]
    synthid = bench.synthid_config()
    marked = bench.hf_generate(model, tok, prompts, 16, 0.7, 1, synthid)[0]
    proc = synthid.construct_processor(model.config.vocab_size, "cpu")
    p_marked = bench.synthid_prefix(proc, marked)
    assert len(p_marked) == len(marked) - bench.SYNTHID_NGRAM + 1
    assert p_marked[-1] < 1e-4
    assert bench.synthid_prefix(proc, plain)[-1] > 1e-3
    other = bench.synthid_config(seed=1).construct_processor(model.config.vocab_size, "cpu")
    assert bench.synthid_prefix(other, marked)[-1] > 1e-3

    kgw = bench.hf_kgw_config()
    green = bench.hf_generate(model, tok, prompts, 16, 0.7, 1, kgw)[0]
    det = WatermarkDetector(model.config, "cpu", kgw, ignore_repeated_ngrams=True)
    # hf_kgw_prefix checks its last entry against the detector called on the whole text.
    p_green = bench.hf_kgw_prefix(det, green)
    assert len(p_green) == len(green) - 1
    assert p_green[-1] < 1e-3 < bench.hf_kgw_prefix(det, plain)[-1]
