"""``distillguard forensics endpoint|weights|corpus ...``: test a suspect, write evidence.

Each kind writes ``evidence.json`` and ``report.html`` into ``--out`` and prints a one-
line JSON summary. The record holds the exact command that reproduces it; the suspect
endpoint's API key is read from an environment variable (``--api-key-env``) so that it
never appears in the command or the report.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

DEFAULT_OUT = "forensics-report"


def _err(message: str) -> int:
    print(f"distillguard forensics: {message}", file=sys.stderr)
    return 2


class _Recorder:
    """Adds options to a parser and remembers them, to rebuild the exact command."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.options: list[tuple[str, str, bool]] = []  # flag, dest, is_flag
        self.positionals: list[str] = []

    def pos(self, name: str, **kw: Any) -> None:
        self.parser.add_argument(name, **kw)
        self.positionals.append(name)

    def opt(self, flag: str, **kw: Any) -> None:
        action = self.parser.add_argument(flag, **kw)
        self.options.append((flag, action.dest, kw.get("action") == "store_true"))


def reproduce_command(args: argparse.Namespace, kind: str, rec: _Recorder) -> str:
    """The command line that reruns this test with every option spelled out."""
    words = ["distillguard"]
    if getattr(args, "config", None):
        words += ["--config", args.config]
    if getattr(args, "data_dir", None):
        words += ["--data-dir", args.data_dir]
    words += ["forensics", kind]
    for name in rec.positionals:
        value = getattr(args, name)
        words += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    for flag, dest, is_flag in rec.options:
        value = getattr(args, dest)
        if is_flag:
            if value:
                words.append(flag)
        elif isinstance(value, list):
            for v in value:
                words += [flag, str(v)]
        elif value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def add_commands(subparsers: Any) -> None:
    """Register ``forensics`` and its kinds on the ``distillguard`` parser."""
    top = subparsers.add_parser(
        "forensics", help="test a suspect model or corpus for our watermark; write evidence",
        description="Prove, with a p-value, that a suspect learned from our outputs. "
        "Writes evidence.json and report.html into --out.")
    kinds = top.add_subparsers(dest="kind", metavar="KIND", required=True)

    def common(rec: _Recorder) -> None:
        rec.opt("--out", default=DEFAULT_OUT, help="folder for evidence.json and report.html")
        rec.opt("--alpha", type=float, default=1e-3, help="significance level (1e-3)")
        rec.opt("--null-keys", type=int, default=100,
                help="unused keys drawn for the empirical null and plots (100)")
        rec.opt("--scheme", help="watermark scheme to test (default: watermark_scheme)")

    def prompt_opts(rec: _Recorder) -> None:
        rec.opt("--accounts", help="comma-separated accounts whose logged prompts to ask "
                "(the most powerful choice: what the harvesters sent)")
        rec.opt("--prompts", help="file of prompts (JSONL `prompt` or one per line)")
        rec.opt("--sharegpt", type=int, help="ask the first N ShareGPT prompts")
        rec.opt("--samples", type=int, default=4, help="answers per prompt (4)")
        rec.opt("--max-tokens", type=int, default=128, help="tokens per answer (128)")
        rec.opt("--temperature", type=float, default=0.7, help="sampling temperature "
                "(0.7); 0 is greedy, where a learned bias shows most (then one answer "
                "per prompt suffices from local weights)")
        rec.opt("--filter-texts", action="append", help="our watermarked outputs the "
                "suspect may have trained on (JSONL `text` or `response`, e.g. the "
                "harvesters' answers; repeatable): score only answer tuples whose "
                "context occurs in them (the filter of Sander et al. 2024)")
        rec.opt("--seed", type=int, default=0, help="sampling seed (local weights)")

    endpoint = kinds.add_parser("endpoint", help="a model behind an OpenAI-compatible API")
    rec_e = _Recorder(endpoint)
    rec_e.pos("base_url", help="the suspect's base URL, with /v1")
    rec_e.opt("--model", required=True, help="model name to ask for")
    rec_e.opt("--api-key-env", default="OPENAI_API_KEY",
              help="environment variable that holds the suspect's API key")
    rec_e.opt("--concurrency", type=int, default=8)
    prompt_opts(rec_e)
    common(rec_e)
    endpoint.set_defaults(func=lambda a: _run(a, "endpoint", rec_e))

    weights = kinds.add_parser("weights", help="open weights: a transformers model folder")
    rec_w = _Recorder(weights)
    rec_w.pos("path", help="the suspect's model folder")
    rec_w.opt("--texts", action="append", help="texts for the reading mode (JSONL `text` "
              "or `response`, e.g. a harvest file of our outputs; repeatable)")
    rec_w.opt("--reference", default="embedded", help="reference model for the reading "
              "mode: `embedded`, a model folder, or `none` (only for texts that do not "
              "carry our watermark)")
    rec_w.opt("--device", default="cpu")
    prompt_opts(rec_w)
    common(rec_w)
    weights.set_defaults(func=lambda a: _run(a, "weights", rec_w))

    corpus = kinds.add_parser("corpus", help="a published text corpus")
    rec_c = _Recorder(corpus)
    rec_c.pos("paths", nargs="+", help="text files or JSONL (`text` field); - for stdin")
    rec_c.opt("--field", help="JSONL field holding the text (default: text, response)")
    common(rec_c)
    corpus.set_defaults(func=lambda a: _run(a, "corpus", rec_c))


def _prompts(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The prompts to ask, and the watermark record of each logged one (by prompt)."""
    from distillguard.distill.prompts import load_prompts, read_prompt_file
    from distillguard.forensics.suspects import logged_prompts

    prompts: list[str] = []
    logged: dict[str, Any] = {}
    if args.accounts:
        names = [a.strip() for a in args.accounts.split(",") if a.strip()]
        logged = logged_prompts(args.settings, names)
        prompts += list(logged)
        if not prompts:
            raise ValueError(f"no watermarked requests of {', '.join(names)} in the store")
    if args.prompts:
        prompts += read_prompt_file(Path(args.prompts))
    if args.sharegpt:
        prompts += load_prompts("sharegpt", args.sharegpt)
    return list(dict.fromkeys(prompts)), logged


def _run(args: argparse.Namespace, kind: str, rec: _Recorder) -> int:
    from distillguard.distill.prompts import PromptSourceError
    from distillguard.forensics.suspects import SuspectError
    from distillguard.watermark.keys import KeyRingError

    try:
        return _investigate(args, kind, rec)
    except (KeyRingError, SuspectError, PromptSourceError, ValueError) as exc:
        return _err(str(exc))


def _investigate(args: argparse.Namespace, kind: str, rec: _Recorder) -> int:
    from distillguard.forensics import radioactivity, report, suspects
    from distillguard.forensics.attribution import attribute
    from distillguard.watermark.schemes import get_scheme
    from distillguard.watermark.service import WatermarkService, scheme_from_settings

    settings = args.settings
    service = WatermarkService.from_settings(settings, create=False)
    if args.scheme:
        scheme = get_scheme(args.scheme)
        if args.scheme == getattr(scheme_from_settings(settings), "name", None):
            scheme = scheme_from_settings(settings)
    else:
        scheme = service.scheme
    if scheme is None:
        raise ValueError("watermark_scheme is none: pass --scheme greenlist (or another)")
    candidates = service.candidates(scheme.name)
    tests = []
    progress = sys.stderr
    suspect_info: dict[str, Any]
    if kind == "corpus":
        texts = suspects.read_texts(args.paths, field=args.field)
        if not texts:
            raise ValueError("the corpus holds no text")
        suspect_info = {"kind": "corpus", "paths": [str(p) for p in args.paths],
                        "documents": len(texts)}
        tests.append(radioactivity.blackbox_test(
            [service.tokenize(t) for t in texts], scheme, candidates,
            null_keys=args.null_keys))
    else:
        prompts, logged = _prompts(args)
        if kind == "endpoint":
            api_key = os.environ.get(args.api_key_env, "")
            suspect = suspects.EndpointSuspect(args.base_url, api_key, args.model,
                                               concurrency=args.concurrency)
        else:
            suspect = suspects.WeightsSuspect(args.path, device=args.device)
        suspect_info = suspect.describe()
        if kind == "weights" and args.texts:
            texts = suspects.read_texts(args.texts)
            ids = [service.tokenize(t) for t in texts]
            reference = None
            if args.reference != "none":
                path = args.reference
                if path == "embedded":
                    from distillguard.backends.model_cache import ensure_converted

                    path = str(ensure_converted(Path(settings.model_cache_dir)
                                                if settings.model_cache_dir else None))
                reference = suspects.WeightsSuspect(path, device=args.device).predictions(
                    ids, progress=progress)
            else:
                own = service.detect_tokens([t for d in ids for t in d], scheme=scheme)
                if own["p_value"] < 1e-3:
                    raise ValueError(
                        f"these texts carry our watermark (p = {own['p_value']:.1e}): the "
                        "reading mode needs a reference model on them (--reference "
                        "embedded or a folder)")
            tests.append(radioactivity.reading_test(
                ids, suspect.predictions(ids, progress=progress), scheme, candidates,
                reference=reference, null_keys=args.null_keys))
        if prompts:
            outputs = suspect.generate(prompts, samples=args.samples,
                                       max_tokens=args.max_tokens,
                                       temperature=args.temperature, seed=args.seed,
                                       progress=progress)
            contexts = None
            if args.filter_texts:
                contexts = radioactivity.context_fingerprints(
                    [service.tokenize(t) for t in suspects.read_texts(args.filter_texts)],
                    scheme)
            tests.append(radioactivity.blackbox_test(
                [service.tokenize(o) for o in outputs], scheme, candidates,
                prompts=[service.tokenize(p) for p in prompts], null_keys=args.null_keys,
                contexts=contexts))
            # Supervised: each answer to a logged prompt under the key that watermarked
            # our answers to it.
            by_key = {(c.key_id, c.cohort): c for c in candidates}
            rows = [(o, by_key.get((rec["key_id"], int(rec["cohort"]))), p)
                    for i, o in enumerate(outputs)
                    for p in [prompts[i // args.samples]]
                    for rec in [logged.get(p)]
                    if rec and rec.get("scheme") == scheme.name]
            rows = [r for r in rows if r[1] is not None]
            if rows:
                tests.append(radioactivity.supervised_test(
                    [service.tokenize(o) for o, _, _ in rows], [c for _, c, _ in rows],
                    scheme, prompts=[service.tokenize(p) for p in dict.fromkeys(
                        p for _, _, p in rows)], null_keys=args.null_keys,
                    contexts=contexts))
            suspect_info["prompts"] = len(prompts)
        if not tests:
            raise ValueError("nothing to test: give prompts (--accounts, --prompts or "
                             "--sharegpt)" + (" or --texts" if kind == "weights" else ""))
    best = min(tests, key=lambda t: t.p_value)
    accounts = None
    try:
        from distillguard.telemetry.store import open_store

        store = open_store(settings)
        try:
            accounts = [a.name for a in store.list_accounts()]
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - attribution to accounts is optional
        print(f"distillguard forensics: no account list ({exc}); cohorts only",
              file=sys.stderr)
    found = attribute(best.per_key, alpha=args.alpha, ring=service.ring, accounts=accounts)
    record = report.build_record(
        command=reproduce_command(args, kind, rec), suspect=suspect_info, tests=tests,
        attribution=found, alpha=args.alpha)
    json_path, html_path = report.write_report(record, tests, Path(args.out))
    print(json.dumps({
        "verdict": record["verdict"], "p_value": record["p_value"],
        "tests": {t.test: {"p_value": t.p_value, "tokens_scored": t.tokens_scored,
                           "key_id": t.key_id, "cohort": t.cohort} for t in tests},
        "flagged_cohorts": [[c.key_id, c.cohort] for c in found.flagged],
        "evidence": str(json_path), "report": str(html_path)}))
    return 0
