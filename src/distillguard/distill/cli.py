"""``distillguard distill harvest|train``: distil a student through a gateway, for real."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any


def _err(message: str) -> int:
    print(f"distillguard distill: {message}", file=sys.stderr)
    return 2


def add_commands(subparsers: Any) -> None:
    """Register ``distill harvest``, ``train``, ``paraphrase`` and ``neutralise``."""
    top = subparsers.add_parser("distill", help="harvest outputs through a gateway and "
                                "train a student on them (what a distiller does)")
    sub = top.add_subparsers(dest="distill_command", metavar="COMMAND", required=True)

    h = sub.add_parser("harvest", help="ask prompts through an OpenAI-compatible API with "
                       "one or many keys; resumable JSONL out")
    h.add_argument("--base-url", required=True, help="API base URL, with /v1")
    h.add_argument("--key", action="append", default=[],
                   help="an API key (repeatable); prefer --keys-file, keys on a command "
                   "line end up in shell history")
    h.add_argument("--keys-file", help="file of keys, one per line: `KEY` or `LABEL KEY`")
    h.add_argument("--prompts", default="sharegpt",
                   help="`sharegpt` (first user turns of ShareGPT) or a file (JSONL "
                   "`prompt` or one per line); default sharegpt")
    h.add_argument("--limit", type=int, help="ask at most this many prompts")
    h.add_argument("--out", required=True, help="JSONL output (appended; resumes)")
    h.add_argument("--model", default="", help="model name (default: the server's first)")
    h.add_argument("--max-tokens", type=int, default=256)
    h.add_argument("--temperature", type=float, default=0.7)
    h.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    h.add_argument("--system", help="a system message sent with every prompt")
    h.add_argument("--retries", type=int, default=3, help="retries on 429/5xx per prompt")
    h.set_defaults(func=_cmd_harvest)

    t = sub.add_parser("train", help="train a student causal LM on harvested pairs")
    t.add_argument("pairs", nargs="+", help="harvest JSONL files (`prompt`, `response`)")
    t.add_argument("--out", required=True, help="folder for the student and checkpoints")
    t.add_argument("--student", default="embedded", help="`embedded` (fine-tune a copy of "
                   "the embedded model; default), `fresh` (new weights, the teacher's "
                   "tokenizer) or a model folder")
    from distillguard.distill.train import SIZES

    t.add_argument("--size", default="s", choices=list(SIZES),
                   help="fine-tune: top blocks trained (xs 1, s 2, m 8, full all); fresh: "
                   "architecture (xs 2x64 ... full 30x576). Default s (CPU); full for a GPU")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    t.add_argument("--epochs", type=float, default=3.0)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, help="learning rate (default: 2e-4 for top blocks, "
                   "5e-5 full fine-tune, 1e-3 fresh)")
    t.add_argument("--heldout", type=float, default=0.1,
                   help="share of pairs held out to measure loss on unseen teacher outputs")
    t.add_argument("--max-prompt-tokens", type=int, default=256)
    t.add_argument("--max-response-tokens", type=int, default=256)
    t.add_argument("--save-every", type=int, default=0, help="steps between checkpoints "
                   "(0: each epoch)")
    t.add_argument("--resume", action="store_true", help="continue from the newest "
                   "checkpoint in --out")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--clean-finetune", metavar="FILE", action="append", default=[],
                   help="scrub (Gu et al. 2024): after distilling, fine-tune the student "
                   "further on these clean JSONL pairs (`prompt`, `response`; "
                   "repeatable); the distilled student before the scrub is kept in "
                   "OUT/before-scrub")
    t.add_argument("--clean-epochs", type=float, default=2.0,
                   help="epochs of the clean fine-tune (2)")
    t.add_argument("--clean-lr", type=float, help="learning rate of the clean fine-tune "
                   "(default: as --lr)")
    t.set_defaults(func=_cmd_train)

    pp = sub.add_parser("paraphrase", help="scrub (Pan et al. 2025): rewrite every "
                        "harvested answer with an unwatermarked model before training")
    pp.add_argument("pairs", nargs="+", help="harvest JSONL files (`prompt`, `response`)")
    pp.add_argument("--out", required=True, help="JSONL of paraphrased pairs")
    pp.add_argument("--paraphraser", default="embedded",
                    help="`embedded` (default) or a model folder")
    pp.add_argument("--template", help="prompt with a {text} placeholder (default: "
                    "`Rewrite the following text in your own words:`)")
    pp.add_argument("--max-tokens", type=int, default=256)
    pp.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    pp.add_argument("--batch-size", type=int, default=16)
    pp.add_argument("--device", default="auto")
    pp.add_argument("--targeted", metavar="CLEAN", action="append", default=[],
                    help="targeted paraphrasing: steer away from the token pairs that "
                    "are over-represented in the harvest against these clean JSONL "
                    "pairs (repeatable)")
    pp.add_argument("--delta", type=float, default=4.0,
                    help="logit penalty of the targeted pairs (4)")
    pp.add_argument("--seed", type=int, default=0)
    pp.set_defaults(func=_cmd_paraphrase)

    n = sub.add_parser("neutralise", help="scrub (Pan et al. 2025): estimate the "
                       "watermark's favoured token pairs from the harvest and subtract "
                       "a bias from them whenever the student decodes")
    n.add_argument("student", help="the student's model folder (gets neutralise.json)")
    n.add_argument("--harvest", action="append", required=True,
                   help="harvest JSONL the student trained on (repeatable)")
    n.add_argument("--clean", action="append", required=True,
                   help="clean JSONL pairs to compare against (repeatable)")
    n.add_argument("--delta", type=float, default=4.0, help="logit penalty (4)")
    n.add_argument("--min-count", type=int, default=2,
                   help="times a pair must occur in the harvest (2)")
    n.add_argument("--ratio", type=float, default=2.0,
                   help="how much more often than in clean text (2)")
    n.set_defaults(func=_cmd_neutralise)


def _cmd_harvest(args: argparse.Namespace) -> int:
    from distillguard.distill.harvest import HarvestError, KeySpec, harvest, read_keys_file
    from distillguard.distill.prompts import PromptSourceError, load_prompts

    try:
        keys = [KeySpec(k) for k in args.key]
        if args.keys_file:
            keys += read_keys_file(Path(args.keys_file))
        prompts = load_prompts(args.prompts, args.limit)
        if not prompts:
            return _err("no prompts to ask")
        summary = asyncio.run(harvest(
            prompts, keys, Path(args.out), base_url=args.base_url, model=args.model,
            max_tokens=args.max_tokens, temperature=args.temperature,
            concurrency=args.concurrency, system=args.system, retries=args.retries))
    except (HarvestError, PromptSourceError) as exc:
        return _err(str(exc))
    print(json.dumps({"out": args.out, **summary.to_dict()}))
    return 1 if summary.failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from distillguard.distill.scrub import clean_finetune
    from distillguard.distill.train import TrainError, read_pairs, train_student

    try:
        pairs = read_pairs([Path(p) for p in args.pairs])
        clean = read_pairs([Path(p) for p in args.clean_finetune]) if args.clean_finetune \
            else []
        cache = args.settings.model_cache_dir
        out = Path(args.out)
        result = train_student(
            pairs, out / "before-scrub" if clean else out, student=args.student,
            size=args.size, device=args.device, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, heldout=args.heldout,
            max_prompt_tokens=args.max_prompt_tokens,
            max_response_tokens=args.max_response_tokens, seed=args.seed,
            save_every=args.save_every, resume=args.resume,
            cache_dir=Path(cache) if cache else None)
        report = result.to_dict()
        if clean:
            scrub = clean_finetune(
                out / "before-scrub", clean, out, size=args.size, epochs=args.clean_epochs,
                lr=args.clean_lr if args.clean_lr is not None else args.lr,
                batch_size=args.batch_size, device=args.device, seed=args.seed,
                max_prompt_tokens=args.max_prompt_tokens,
                max_response_tokens=args.max_response_tokens)
            report["clean_finetune"] = scrub.to_dict()
    except TrainError as exc:
        return _err(str(exc))
    print(json.dumps(report))
    return 0


def _paraphraser_path(name: str, settings: Any) -> str:
    if name != "embedded":
        return name
    from distillguard.backends.model_cache import ensure_converted

    cache = settings.model_cache_dir
    return str(ensure_converted(Path(cache) if cache else None))


def _cmd_paraphrase(args: argparse.Namespace) -> int:
    from distillguard.distill.scrub import (
        PARAPHRASE_TEMPLATE,
        build_neutraliser,
        paraphrase_pairs,
    )
    from distillguard.distill.train import TrainError, read_pairs, resolve_device
    from distillguard.forensics.suspects import SuspectError, WeightsSuspect

    try:
        pairs = read_pairs([Path(p) for p in args.pairs])
        suspect = WeightsSuspect(_paraphraser_path(args.paraphraser, args.settings),
                                 device=resolve_device(args.device),
                                 batch_size=args.batch_size, neutralise=False)
        avoid = None
        if args.targeted:
            clean = read_pairs([Path(p) for p in args.targeted])
            avoid = build_neutraliser(suspect.tokenizer, [p.response for p in pairs],
                                      [p.response for p in clean], delta=args.delta)
        result = paraphrase_pairs(pairs, suspect, template=args.template or
                                  PARAPHRASE_TEMPLATE, max_tokens=args.max_tokens,
                                  temperature=args.temperature, seed=args.seed, avoid=avoid)
    except (TrainError, SuspectError) as exc:
        return _err(str(exc))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for pair in result.pairs:
            fh.write(json.dumps({"prompt": pair.prompt, "response": pair.response},
                                ensure_ascii=False) + "\n")
    print(json.dumps({"out": str(out), "rewritten": result.rewritten,
                      "kept_original": result.kept_original,
                      "targeted_pairs": avoid.size if avoid is not None else 0}))
    return 0


def _cmd_neutralise(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from distillguard.distill.scrub import build_neutraliser
    from distillguard.distill.train import TrainError, read_pairs

    folder = Path(args.student)
    if not (folder / "config.json").is_file():
        return _err(f"no student model folder at {folder}")
    try:
        harvest = read_pairs([Path(p) for p in args.harvest])
        clean = read_pairs([Path(p) for p in args.clean])
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        neutraliser = build_neutraliser(
            tokenizer, [p.response for p in harvest], [p.response for p in clean],
            delta=args.delta, min_count=args.min_count, ratio=args.ratio)
    except (TrainError, OSError) as exc:
        return _err(str(exc))
    path = neutraliser.save(folder)
    print(json.dumps({"out": str(path), "pairs": neutraliser.size, "delta": args.delta}))
    return 0
