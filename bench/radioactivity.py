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
Also printed: the student's loss on held-out teacher outputs before and after training,
and on its own training pairs after training (how far it fitted them).
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
from distillguard.distill.train import Pair, train_student
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


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=60, help="training pairs per student")
    p.add_argument("--heldout", type=int, default=6, help="held-out teacher pairs")
    p.add_argument("--max-tokens", type=int, default=96, help="tokens per answer")
    p.add_argument("--rhos", default="0,0.05,0.1,0.25,1", help="watermarked shares")
    p.add_argument("--accounts", type=int, default=2, help="harvesting accounts")
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
    p.add_argument("--keep", help="keep the work folder here (default: a temp folder)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.monotonic()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dg-radio-"))
    work.mkdir(parents=True, exist_ok=True)
    rhos = [float(r) for r in args.rhos.split(",")]
    teacher_path = ""
    if args.teacher == "tiny":
        from distillguard.backends.tiny import create_tiny_model

        teacher_path = str(create_tiny_model(work / "tiny-teacher"))
    elif args.teacher != "embedded":
        teacher_path = args.teacher
    settings = Settings.load(
        env={}, data_dir=str(work / "data"), backend="local", model_name="teacher",
        local_model_path=teacher_path, watermark_scheme="greenlist",
        watermark_delta=args.delta, watermark_master_secret=secrets.token_hex(24),
        watermark_cohorts=16, max_tokens_limit=max(4096, args.max_tokens))
    service = WatermarkService.from_settings(settings)
    accounts = [f"harvester-{i + 1}" for i in range(args.accounts)]
    true_cohorts = {a: service.ring.active.cohort_of(a) for a in accounts}

    # --- prompts: ShareGPT first user turns with the answers that followed -------------
    need = args.prompts + args.heldout
    exchanges = []
    for ex in iter_sharegpt(max_chars=400):
        if ex.answer and len(ex.answer) > 40:
            exchanges.append(ex)
        if len(exchanges) >= need:
            break
    train_ex, held_ex = exchanges[: args.prompts], exchanges[args.prompts:need]

    # --- harvest through the watermarked gateway -------------------------------------
    from distillguard.gateway.app import build_app

    t0 = time.monotonic()
    app = build_app(settings, watermark=service)
    harvest_file = work / "harvest.jsonl"
    with serve_in_thread(app, start_timeout=300) as url:
        store = app.state.gateway.store
        keys = [KeySpec(store.create_key(a)[1], a) for a in accounts]
        log(f"teacher gateway at {url}; harvesting {need} prompts with {len(keys)} keys")
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
    candidates = service.candidates(service.scheme.name)
    scheme = service.scheme
    by_key = {(c.key_id, c.cohort): c for c in candidates}

    # Sanity row: the harvested answers themselves.
    teacher_texts = [ids(answers[e.prompt]) for e in train_ex if e.prompt in answers]
    teacher_bb = blackbox_test(teacher_texts, scheme, candidates, null_keys=20)

    reference = WeightsSuspect(teacher_path or _embedded())
    ref_cache: dict[tuple[int, ...], list[int]] = {}
    prefix_cache: dict = {}
    rows = []
    for rho in rhos:
        k = int(round(rho * len(train_ex)))
        pairs = [Pair(e.prompt, answers[e.prompt]) if i < k and e.prompt in answers
                 else Pair(e.prompt, truncate(e.answer or ""))
                 for i, e in enumerate(train_ex)]
        wm_prompts = {e.prompt for e in train_ex[:k]}
        control = rho == 0
        query_pool = ({e.prompt for e in train_ex[: max(1, round(0.1 * len(train_ex)))]}
                      if control else wm_prompts)
        query = [p for p in logged if p in query_pool][: args.query_rows]
        # Greedy decoding gives one answer per prompt: more would be copies.
        samples = (1 if args.query_temperature == 0
                   else max(1, args.query_rows // max(len(query), 1)))
        log(f"rho={rho:g}: {k} watermarked pairs of {len(pairs)}; training")
        t1 = time.monotonic()
        out = work / f"student-{rho:g}"
        result = train_student(
            pairs, out, student=teacher_path or "embedded", size=args.size,
            device=args.device, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            heldout_pairs=heldout, max_prompt_tokens=96,
            max_response_tokens=args.max_tokens + 1, prefix_cache=prefix_cache)
        t_train = time.monotonic() - t1
        t2 = time.monotonic()
        student = WeightsSuspect(out, batch_size=32)
        outputs = student.generate(query, samples=samples, max_tokens=args.max_tokens,
                                   temperature=args.query_temperature, seed=1)
        texts = [ids(answers[p]) for p in query if p in answers]
        out_ids = [ids(o) for o in outputs]
        bb = blackbox_test(out_ids, scheme, candidates,
                           prompts=[ids(p) for p in query], null_keys=20)
        bbf = blackbox_test(out_ids, scheme, candidates, prompts=[ids(p) for p in query],
                            null_keys=20, contexts=context_fingerprints(texts, scheme))
        # Supervised: each answer under the key our logs name for its prompt.
        assigned = [by_key[(logged_keys[p]["key_id"], int(logged_keys[p]["cohort"]))]
                    for p in query for _ in range(samples)]
        sup = supervised_test(out_ids, assigned, scheme, prompts=[ids(p) for p in query],
                              null_keys=20, contexts=context_fingerprints(texts, scheme))
        missing = [t for t in texts if tuple(t) not in ref_cache]
        for t, pred in zip(missing, reference.predictions(missing)):
            ref_cache[tuple(t)] = pred
        rd = reading_test(texts, student.predictions(texts), scheme, candidates,
                          reference=[ref_cache[tuple(t)] for t in texts], null_keys=20)
        t_test = time.monotonic() - t2
        best = min(bb.per_key, key=lambda x: x.p_value)
        rows.append({
            "rho": rho, "wm_pairs": k, "train_response_tokens": result.response_tokens_per_epoch,
            "heldout_loss_before": result.heldout_loss_before,
            "heldout_loss_after": result.heldout_loss_after,
            "train_loss_first": result.train_loss_first,
            "train_loss_after": result.train_loss_after,
            "query_prompts": len(query), "query_answers": len(outputs),
            "bb_tokens_scored": bb.tokens_scored,
            "bb_green_fraction": best.hit_rate, "bb_p_value": bb.p_value,
            "bb_cohort": bb.cohort, "bbf_tokens_scored": bbf.tokens_scored,
            "bbf_green_fraction": min(bbf.per_key, key=lambda x: x.p_value).hit_rate,
            "bbf_p_value": bbf.p_value, "bbf_cohort": bbf.cohort,
            "sup_tokens_scored": sup.tokens_scored, "sup_p_value": sup.p_value,
            "read_tokens_scored": rd.tokens_scored,
            "read_p_value": rd.p_value, "train_s": round(t_train), "test_s": round(t_test)})
        log(f"rho={rho:g}: {json.dumps(rows[-1])}")
        shutil.rmtree(out, ignore_errors=True)  # 0.5 GB per student

    total = time.monotonic() - started
    print(f"# Radioactivity: teacher {args.teacher} (greenlist, gamma 0.25, delta "
          f"{args.delta:g}, context 1, 16 cohorts), {len(accounts)} harvesting accounts "
          f"in cohorts {sorted(true_cohorts.values())}")
    asked = ("one greedy answer per logged prompt" if args.query_temperature == 0 else
             f"{args.query_rows} answers to the logged prompts at "
             f"T={args.query_temperature:g}")
    print(f"# students: --size {args.size}, {args.epochs:g} epochs, {len(train_ex)} pairs of "
          f"<= {args.max_tokens} answer tokens, lr {args.lr:g}; black-box: {asked}"
          f" (at most {args.query_rows} prompts); filtered = only tuples whose context "
          f"occurs in the harvested answers to those prompts")
    print(f"# teacher's own harvested answers: {teacher_bb.tokens_scored} tuples, green "
          f"{min(teacher_bb.per_key, key=lambda x: x.p_value).hit_rate:.3f}, "
          f"p = {teacher_bb.p_value:.1e}")
    print("| rho | wm pairs | train loss first -> after | held-out loss before -> after | "
          "query prompts | black-box tuples | green fraction | black-box p | "
          "filtered tuples | filtered green | filtered p | cohort (filtered) | "
          "supervised tuples | supervised p | "
          "reading tuples | reading p (vs base) | train s | test s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rho']:.0%} | {r['wm_pairs']} | {r['train_loss_first']:.3f} -> "
              f"{r['train_loss_after']:.3f} | {r['heldout_loss_before']:.3f} -> "
              f"{r['heldout_loss_after']:.3f} | {r['query_prompts']} | "
              f"{r['bb_tokens_scored']} | {r['bb_green_fraction']:.3f} | "
              f"{r['bb_p_value']:.1e} | {r['bbf_tokens_scored']} | "
              f"{r['bbf_green_fraction']:.3f} | {r['bbf_p_value']:.1e} | "
              f"{r['bbf_cohort']} | {r['sup_tokens_scored']} | {r['sup_p_value']:.1e} | "
              f"{r['read_tokens_scored']} | "
              f"{r['read_p_value']:.1e} | {r['train_s']} | {r['test_s']} |")
    print(f"# harvest {t_harvest:.0f} s ({summary.completion_tokens} tokens), total "
          f"{total / 60:.1f} min")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _embedded() -> str:
    from distillguard.backends.model_cache import ensure_converted

    return str(ensure_converted())


if __name__ == "__main__":
    sys.exit(main())
