"""Radioactivity: does a student distilled through the gateway carry our watermark?

    .venv/bin/python bench/radioactivity.py                  # CPU size, ~30 min on 2 shared cores
    .venv/bin/python bench/radioactivity.py --teacher tiny --prompts 20   # smoke run
    .venv/bin/python bench/radioactivity.py --prompts 2000 --max-tokens 256 \
        --size full --device cuda --epochs 2                  # a GPU

Teacher: the embedded model behind a real gateway (uvicorn on 127.0.0.1), greenlist
watermark at ``--delta`` (default 4: the strength a degrade action gives a flagged
account, 2 x the default 2). Harvest: the official openai SDK through ``--accounts``
keys of distinct accounts (``distillguard.distill.harvest``). Students: copies of the
embedded model fine-tuned (``distillguard.distill.train``, ``--size``) on ``--prompts``
pairs of which a share rho are harvested watermarked answers and the rest the ShareGPT
answers to the other prompts (text that never passed through the gateway).

Tests (``distillguard.forensics.radioactivity``), per student:
* black-box: the prompts the harvesting accounts sent, read back from the gateway's
  event store, restricted to those whose answers the student trained on (for rho = 0,
  the 10% set, as a control); ``--query-rows`` answers in all at ``--query-temperature``
  (default 0: greedy, one answer per prompt, where a learned bias shows most);
  one exact p-value over all 16 cohort keys (Sidak), tuples deduplicated across
  outputs, tuples from the prompts excluded; once over all tuples and once with the
  filter of Sander et al. (only tuples whose context occurs in the harvested answers to
  the query prompts, ``context_fingerprints``);
* open weights: the student's argmax predictions on the harvested watermarked answers
  of the same prompts, against the base model's (Fisher exact, reading mode).
* canary (``distillguard.forensics.canary``): the gateway opens each answer to the
  harvesting accounts with a keyed code (``canary_rate`` 1 here, the default for a
  flagged account); the same query answers are searched for the code our key gives each
  logged prompt (exact Poisson-binomial p-value, supervised).
Also printed: the student's loss on held-out teacher outputs before and after training,
and on its own training pairs after training (how far it fitted them).

Scrubs (``--scrubs``, ``distillguard.distill.scrub``), each a student of its own:
``none``; ``finetune`` (the distilled student fine-tuned further on ``--clean-pairs``
clean ShareGPT pairs for ``--clean-epochs``, Gu et al. 2024); ``paraphrase`` (every
harvested answer rewritten by the embedded model before training, Pan et al. 2025);
``targeted`` (the same, steered away from the token pairs over-represented in the
harvest); ``neutralise`` (the undistorted student decoded with the estimated favoured
pairs penalised by ``--neutralise-delta``, Pan et al.'s inference-time neutralisation).
At rho = 0 there is no harvest to paraphrase or neutralise: those rows are the ``none``
student. ``--seeds`` repeats everything (a new key, harvest and training seed each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from distillguard.config import Settings
from distillguard.distill.harvest import KeySpec, harvest
from distillguard.distill.prompts import iter_sharegpt
from distillguard.distill.scrub import (
    build_neutraliser,
    clean_finetune,
    paraphrase_pairs,
)
from distillguard.distill.train import Pair, train_student
from distillguard.forensics.canary import canary_test
from distillguard.forensics.radioactivity import (
    blackbox_test,
    context_fingerprints,
    reading_test,
    supervised_test,
)
from distillguard.forensics.suspects import WeightsSuspect, logged_prompts
from distillguard.testing.server import serve_in_thread
from distillguard.watermark.service import WatermarkService


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


SCRUBS = ("none", "finetune", "paraphrase", "targeted", "neutralise")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=60, help="training pairs per student")
    p.add_argument("--heldout", type=int, default=6, help="held-out teacher pairs")
    p.add_argument("--max-tokens", type=int, default=96, help="tokens per answer")
    p.add_argument("--rhos", default="0,0.1,1", help="watermarked shares")
    p.add_argument("--accounts", type=int, default=2, help="harvesting accounts")
    p.add_argument("--scheme", default="greenlist", choices=("greenlist", "exponential"),
                   help="teacher's watermark scheme (greenlist: the table's; exponential: "
                   "the gateway's default)")
    p.add_argument("--delta", type=float, default=4.0, help="teacher's greenlist delta")
    p.add_argument("--size", default="s", help="student size (distill train --size)")
    # A distiller fits its harvest: 8 epochs at 1e-3 take the top two blocks' training
    # loss from ~2.3 to ~0.3 nats/token (the student reproduces what it was sold).
    p.add_argument("--epochs", type=float, default=8.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--query-rows", type=int, default=32, help="answers asked of each "
                   "student, spread evenly over its query prompts")
    p.add_argument("--query-temperature", type=float, default=0.0,
                   help="0: greedy, one answer per query prompt")
    p.add_argument("--teacher", default="embedded", help="`embedded`, `tiny` or a folder")
    p.add_argument("--scrubs", default="none,finetune,paraphrase,neutralise",
                   help=f"comma-separated, of: {', '.join(SCRUBS)}")
    p.add_argument("--seeds", default="1", help="comma-separated seeds (one run each)")
    p.add_argument("--clean-pairs", type=int, default=60,
                   help="clean pairs of the finetune scrub (other prompts)")
    p.add_argument("--clean-epochs", type=float, default=4.0)
    p.add_argument("--neutralise-delta", type=float, default=4.0)
    p.add_argument("--neutralise-min-count", type=int, default=1)
    p.add_argument("--canary-rate", type=float, default=1.0,
                   help="share of the harvesting accounts' answers given a canary")
    p.add_argument("--canary-samples", type=int, default=0,
                   help="also ask each query prompt this many sampled answers for the "
                   "canary test (0: the canary test reads the black-box answers)")
    p.add_argument("--canary-temperature", type=float, default=0.8)
    p.add_argument("--keep", help="keep the work folder here (default: a temp folder)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.monotonic()
    scrubs = [s for s in args.scrubs.split(",") if s]
    unknown = set(scrubs) - set(SCRUBS)
    if unknown:
        raise SystemExit(f"unknown scrub(s): {', '.join(sorted(unknown))}")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dg-radio-"))
    work.mkdir(parents=True, exist_ok=True)
    rhos = [float(r) for r in args.rhos.split(",")]
    teacher_path = ""
    if args.teacher == "tiny":
        from distillguard.backends.tiny import create_tiny_model

        teacher_path = str(create_tiny_model(work / "tiny-teacher"))
    elif args.teacher != "embedded":
        teacher_path = args.teacher

    # --- prompts: ShareGPT first user turns with the answers that followed -------------
    need = args.prompts + args.heldout
    exchanges = []
    for ex in iter_sharegpt(max_chars=400):
        if ex.answer and len(ex.answer) > 40:
            exchanges.append(ex)
        if len(exchanges) >= need + args.clean_pairs:
            break
    train_ex, held_ex = exchanges[: args.prompts], exchanges[args.prompts:need]
    clean_ex = exchanges[need:need + args.clean_pairs]

    rows, meta = [], []
    for seed in [int(x) for x in args.seeds.split(",")]:
        r, m = run_seed(args, seed, work / f"seed-{seed}", teacher_path, train_ex, held_ex,
                        clean_ex, rhos, scrubs)
        rows += r
        meta.append(m)

    total = time.monotonic() - started
    for m in meta:
        print(f"# seed {m['seed']}: teacher {args.teacher} ({m['scheme']}, 16 cohorts), "
              f"{args.accounts} harvesting accounts "
              f"in cohorts {m['cohorts']}; teacher's own harvested answers: "
              f"{m['teacher_tuples']} tuples, "
              + ("" if m['teacher_green'] is None else f"green {m['teacher_green']:.3f}, ")
              + f"p = "
              f"{m['teacher_p']:.1e}; canary in {m['canaried']} of {m['harvested']} "
              f"answers; harvest {m['harvest_s']:.0f} s; paraphrase: {m['paraphrase']}")
    asked = ("one greedy answer per logged prompt" if args.query_temperature == 0 else
             f"{args.query_rows} answers to the logged prompts at "
             f"T={args.query_temperature:g}")
    print(f"# students: --size {args.size}, {args.epochs:g} epochs, {len(train_ex)} pairs of "
          f"<= {args.max_tokens} answer tokens, lr {args.lr:g}; finetune scrub: "
          f"{len(clean_ex)} clean pairs, {args.clean_epochs:g} epochs; neutralise: delta "
          f"{args.neutralise_delta:g}, min count {args.neutralise_min_count}; black-box: "
          f"{asked} (at most {args.query_rows} prompts); filtered = only tuples whose "
          f"context occurs in the harvested answers to those prompts")
    print("| seed | scrub | rho | wm pairs | train loss after | held-out loss before -> "
          "after | query prompts | black-box p | filtered tuples | filtered green | "
          "filtered p | supervised p | reading p (vs base) | canary hits | canary p | "
          "train s | test s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    def green(r):
        return "-" if r["bbf_green_fraction"] is None else f"{r['bbf_green_fraction']:.3f}"

    for r in rows:
        print(f"| {r['seed']} | {r['scrub']} | {r['rho']:.0%} | {r['wm_pairs']} | "
              f"{r['train_loss_after']:.3f} | {r['heldout_loss_before']:.3f} -> "
              f"{r['heldout_loss_after']:.3f} | {r['query_prompts']} | "
              f"{r['bb_p_value']:.1e} | {r['bbf_tokens_scored']} | {green(r)} | "
              f"{r['bbf_p_value']:.1e} | "
              f"{r['sup_p_value']:.1e} | {r['read_p_value']:.1e} | "
              f"{r['canary_hits']}/{r['canary_prompts']} | {r['canary_p_value']:.1e} | "
              f"{r['train_s']} | {r['test_s']} |")
    print(f"# total {total / 60:.1f} min")
    if args.keep:
        (work / "rows.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=1))
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_seed(args, seed, work, teacher_path, train_ex, held_ex, clean_ex, rhos, scrubs):
    """One seed: a new key, one harvest, then every (rho, scrub) student and its tests."""
    import hashlib

    # Every run draws a new key: a harvest or event store left by an earlier run (--keep)
    # was watermarked under another one.
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = Settings.load(
        env={}, data_dir=str(work / "data"), backend="local", model_name="teacher",
        local_model_path=teacher_path, watermark_scheme=args.scheme,
        watermark_delta=args.delta,
        watermark_master_secret=hashlib.sha256(b"bench/radioactivity %d %s" % (
            seed, secrets.token_hex(8).encode())).hexdigest(),
        watermark_cohorts=16, max_tokens_limit=max(4096, args.max_tokens),
        canary_rate=args.canary_rate,
        # The harvest runs 16 requests at once over two accounts; this bench measures
        # what a student inherits, not the per-account concurrency limit.
        max_concurrent_per_account=0)
    service = WatermarkService.from_settings(settings)
    accounts = [f"harvester-{i + 1}" for i in range(args.accounts)]
    true_cohorts = {a: service.ring.active.cohort_of(a) for a in accounts}
    exchanges = train_ex + held_ex

    # --- harvest through the watermarked gateway -------------------------------------
    from distillguard.gateway.app import build_app

    t0 = time.monotonic()
    app = build_app(settings, watermark=service)
    harvest_file = work / "harvest.jsonl"
    with serve_in_thread(app, start_timeout=300) as url:
        store = app.state.runtime.store
        keys = [KeySpec(store.create_key(a)[1], a) for a in accounts]
        log(f"seed {seed}: teacher gateway at {url}; harvesting {len(exchanges)} prompts")
        summary = asyncio.run(harvest(
            [e.prompt for e in exchanges], keys, harvest_file, base_url=url + "/v1",
            model="teacher", max_tokens=args.max_tokens, temperature=0.7,
            concurrency=16))
    t_harvest = time.monotonic() - t0
    log(f"harvest: {summary.to_dict()}")
    answers = {}
    for line in harvest_file.read_text().splitlines():
        rec = json.loads(line)
        answers[rec["prompt"]] = rec["response"]
    # What the accounts sent, from our logs, with the key that watermarked each answer.
    logged_keys = logged_prompts(settings, accounts)
    logged = list(logged_keys)
    tok = service.tokenizer

    def ids(text: str) -> list[int]:
        return service.tokenize(text)

    def truncate(text: str) -> str:
        return tok.decode(ids(text)[: args.max_tokens])

    heldout = [Pair(e.prompt, answers[e.prompt]) for e in held_ex if e.prompt in answers]
    clean_pairs = [Pair(e.prompt, truncate(e.answer or "")) for e in clean_ex]
    candidates = service.candidates(service.scheme.name)
    scheme = service.scheme
    by_key = {(c.key_id, c.cohort): c for c in candidates}

    teacher_texts = [ids(answers[e.prompt]) for e in train_ex if e.prompt in answers]
    teacher_bb = blackbox_test(teacher_texts, scheme, candidates, null_keys=20)
    canaried = sum(bool((logged_keys.get(p) or {}).get("canary")) for p in logged)

    reference = WeightsSuspect(teacher_path or _embedded(), neutralise=False)
    paraphrased: dict[str, dict[str, str]] = {}
    para_note = "none"
    harvested_train = [Pair(e.prompt, answers[e.prompt]) for e in train_ex
                       if e.prompt in answers]
    for kind in ("paraphrase", "targeted"):
        if kind not in scrubs:
            continue
        t = time.monotonic()
        avoid = None
        if kind == "targeted":
            avoid = build_neutraliser(
                tok, [p.response for p in harvested_train],
                [p.response for p in clean_pairs] + [truncate(e.answer or "")
                                                     for e in train_ex],
                delta=args.neutralise_delta, min_count=args.neutralise_min_count)
        reference.batch_size = 16
        res = paraphrase_pairs(harvested_train, reference, max_tokens=args.max_tokens + 32,
                               seed=seed, avoid=avoid)
        paraphrased[kind] = {p.prompt: truncate(p.response) for p in res.pairs}
        kept = sum(codes_kept(p.response, q.response)
                   for p, q in zip(harvested_train, res.pairs))
        para_note = (f"{kind}: {res.rewritten} rewritten, canary code kept in {kept}, "
                     f"{time.monotonic() - t:.0f} s") if para_note == "none" else (
            para_note + f"; {kind}: {res.rewritten} rewritten, canary code kept in {kept}, "
            f"{time.monotonic() - t:.0f} s")
        log(f"seed {seed}: {para_note}")
    ref_cache: dict[tuple[int, ...], list[int]] = {}
    prefix_cache: dict = {}
    rows = []
    for rho in rhos:
        k = int(round(rho * len(train_ex)))
        wm_prompts = [e.prompt for e in train_ex[:k] if e.prompt in answers]
        clean_mix = {e.prompt: truncate(e.answer or "") for e in train_ex}
        control = rho == 0
        query_pool = ({e.prompt for e in train_ex[: max(1, round(0.1 * len(train_ex)))]}
                      if control else set(wm_prompts))
        query = [p for p in logged if p in query_pool][: args.query_rows]
        texts = [ids(answers[p]) for p in query if p in answers]
        missing = [t for t in texts if tuple(t) not in ref_cache]
        for t, pred in zip(missing, reference.predictions(missing, progress=None)):
            ref_cache[tuple(t)] = pred

        # Defaults bind this iteration's values: the helpers are only called inside it.
        def pairs_with(source: dict[str, str], k=k, clean_mix=clean_mix) -> list[Pair]:
            return [Pair(e.prompt, source[e.prompt]) if i < k and e.prompt in source
                    else Pair(e.prompt, clean_mix[e.prompt]) for i, e in enumerate(train_ex)]

        def train(pairs: list[Pair], out: Path, *, base: str | None = None):
            t1 = time.monotonic()
            if base is None:
                result = train_student(
                    pairs, out, student=teacher_path or "embedded", size=args.size,
                    device=args.device, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, heldout_pairs=heldout, max_prompt_tokens=96,
                    max_response_tokens=args.max_tokens + 1, prefix_cache=prefix_cache,
                    seed=seed, progress=None)
            else:
                result = clean_finetune(
                    base, clean_pairs, out, size=args.size, epochs=args.clean_epochs,
                    lr=args.lr, batch_size=args.batch_size, device=args.device, seed=seed,
                    max_prompt_tokens=96, max_response_tokens=args.max_tokens + 1,
                    heldout_pairs=heldout, prefix_cache=prefix_cache, progress=None)
            return result, time.monotonic() - t1

        def record(scrub: str, folder: Path, result, t_train: float, *, query=query,
                   texts=texts, rho=rho, k=k, **extra) -> None:
            t2 = time.monotonic()
            test = evaluate(args, folder, query, texts, answers, logged_keys, by_key,
                            candidates, scheme, service, ids,
                            [ref_cache[tuple(t)] for t in texts])
            row = {"seed": seed, "scrub": scrub, "rho": rho, "wm_pairs": k,
                   "train_loss_after": result.train_loss_after,
                   "heldout_loss_before": result.heldout_loss_before,
                   "heldout_loss_after": result.heldout_loss_after,
                   "query_prompts": len(query), **test, **extra,
                   "train_s": round(t_train), "test_s": round(time.monotonic() - t2)}
            rows.append(row)
            log(f"seed {seed} rho={rho:g} {scrub}: {json.dumps(row)}")

        base_dir = work / f"student-{rho:g}"

        def same_as_none(scrub: str, result, t_train: float, *, rho=rho,
                         base_dir=base_dir, **extra) -> None:
            # Nothing to scrub (no harvested pair): the student and its tests are none's.
            done = [r for r in rows if r["seed"] == seed and r["rho"] == rho
                    and r["scrub"] == "none"]
            if done:
                rows.append({**done[0], "scrub": scrub, **extra})
            else:
                record(scrub, base_dir, result, t_train, **extra)

        log(f"seed {seed} rho={rho:g}: {k} watermarked pairs; training")
        base_result, t_base = train(pairs_with(answers), base_dir)
        if "none" in scrubs:
            record("none", base_dir, base_result, t_base)
        if "finetune" in scrubs:
            ft_dir = work / f"student-{rho:g}-finetune"
            res, t_ft = train([], ft_dir, base=str(base_dir))
            res.heldout_loss_before = base_result.heldout_loss_before
            record("finetune", ft_dir, res, t_base + t_ft)
            shutil.rmtree(ft_dir, ignore_errors=True)
        for kind in ("paraphrase", "targeted"):
            if kind not in scrubs:
                continue
            if k == 0:
                same_as_none(kind, base_result, t_base)
                continue
            p_dir = work / f"student-{rho:g}-{kind}"
            res, t_p = train(pairs_with(paraphrased[kind]), p_dir)
            record(kind, p_dir, res, t_p)
            shutil.rmtree(p_dir, ignore_errors=True)
        if "neutralise" in scrubs:
            if k == 0:
                same_as_none("neutralise", base_result, t_base, neutralised_pairs=0)
            else:
                neutraliser = build_neutraliser(
                    tok, [answers[p] for p in wm_prompts],
                    [p.response for p in clean_pairs]
                    + [clean_mix[e.prompt] for e in train_ex[k:]],
                    delta=args.neutralise_delta, min_count=args.neutralise_min_count)
                neutraliser.save(base_dir)
                record("neutralise", base_dir, base_result, t_base,
                       neutralised_pairs=neutraliser.size)
        shutil.rmtree(base_dir, ignore_errors=True)  # 0.5 GB per student

    best = min(teacher_bb.per_key, key=lambda x: x.p_value)
    meta = {"seed": seed, "cohorts": sorted(true_cohorts.values()),
            "teacher_tuples": teacher_bb.tokens_scored, "teacher_green": best.hit_rate,
            "teacher_p": teacher_bb.p_value, "canaried": canaried, "harvested": len(logged),
            "harvest_s": t_harvest, "paraphrase": para_note,
            "scheme": ", ".join([scheme.name] + [f"{k} {v:g}" for k, v in scheme.params.items()
                                                 if isinstance(v, (int, float))])}
    return rows, meta


def codes_kept(original: str, rewritten: str) -> bool:
    """Whether a paraphrase kept the canary code of the answer it rewrote."""
    from distillguard.forensics.canary import codes_in

    codes = codes_in(original)
    return bool(codes) and codes <= codes_in(rewritten)


def evaluate(args, folder, query, texts, answers, logged_keys, by_key, candidates, scheme,
             service, ids, reference_predictions) -> dict:
    """Every test of one student: black-box (plain, filtered, supervised), reading mode
    against the base model, and the canary."""
    samples = (1 if args.query_temperature == 0
               else max(1, args.query_rows // max(len(query), 1)))
    student = WeightsSuspect(folder, batch_size=32)
    outputs = student.generate(query, samples=samples, max_tokens=args.max_tokens,
                               temperature=args.query_temperature, seed=1, progress=None)
    out_ids = [ids(o) for o in outputs]
    prompt_ids = [ids(p) for p in query]
    contexts = context_fingerprints(texts, scheme)
    bb = blackbox_test(out_ids, scheme, candidates, prompts=prompt_ids, null_keys=20)
    bbf = blackbox_test(out_ids, scheme, candidates, prompts=prompt_ids, null_keys=20,
                        contexts=contexts)
    # Supervised: each answer under the key our logs name for its prompt.
    assigned = [(logged_keys[p]["key_id"], int(logged_keys[p]["cohort"]))
                for p in query for _ in range(samples)]
    sup = supervised_test(out_ids, [by_key[a] for a in assigned], scheme,
                          prompts=prompt_ids, null_keys=20, contexts=contexts)
    rd = reading_test(texts, student.predictions(texts, progress=None), scheme, candidates,
                      reference=reference_predictions, null_keys=20)
    canaried = [i for i, p in enumerate(query) if (logged_keys[p] or {}).get("canary")]
    can_answers = [outputs[i * samples:(i + 1) * samples] for i in canaried]
    if args.canary_samples:
        # A code a student learned as a rare opening shows in some samples, not greedily.
        extra = student.generate([query[i] for i in canaried], samples=args.canary_samples,
                                 max_tokens=24, temperature=args.canary_temperature,
                                 seed=2, progress=None)
        n = args.canary_samples
        can_answers = [a + extra[j * n:(j + 1) * n] for j, a in enumerate(can_answers)]
    can = canary_test([query[i] for i in canaried], can_answers, service.ring,
                      assigned=[assigned[i * samples] for i in canaried])
    return {"bb_tokens_scored": bb.tokens_scored, "bb_p_value": bb.p_value,
            "bbf_tokens_scored": bbf.tokens_scored,
            "bbf_green_fraction": min(bbf.per_key, key=lambda x: x.p_value).hit_rate,
            "bbf_p_value": bbf.p_value, "sup_tokens_scored": sup.tokens_scored,
            "sup_p_value": sup.p_value, "read_tokens_scored": rd.tokens_scored,
            "read_p_value": rd.p_value, "canary_prompts": can.prompts,
            "canary_hits": can.hits, "canary_p_value": can.p_value}


def _embedded() -> str:
    from distillguard.backends.model_cache import ensure_converted

    return str(ensure_converted())


if __name__ == "__main__":
    sys.exit(main())
