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
    """Register ``distill harvest`` and ``distill train``."""
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
    t.set_defaults(func=_cmd_train)


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
    from distillguard.distill.train import TrainError, read_pairs, train_student

    try:
        pairs = read_pairs([Path(p) for p in args.pairs])
        cache = args.settings.model_cache_dir
        result = train_student(
            pairs, Path(args.out), student=args.student, size=args.size,
            device=args.device, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, heldout=args.heldout, max_prompt_tokens=args.max_prompt_tokens,
            max_response_tokens=args.max_response_tokens, seed=args.seed,
            save_every=args.save_every, resume=args.resume,
            cache_dir=Path(cache) if cache else None)
    except TrainError as exc:
        return _err(str(exc))
    print(json.dumps(result.to_dict()))
    return 0
