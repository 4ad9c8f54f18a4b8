"""``distillguard wm``: detect watermarks in text, list and rotate watermark keys.

``wm detect PATH...`` reads text files (one document each), JSONL files (one document
per line, in a ``text`` field) or ``-`` (standard input, JSONL when its first line is a
JSON object, else one document) and prints one JSON line per document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from distillguard.watermark.keys import KeyRingError
from distillguard.watermark.registry import SCHEMES
from distillguard.watermark.service import (
    NORMALIZATIONS,
    WatermarkService,
    scheme_from_settings,
)

_JSONL_SUFFIXES = (".jsonl", ".ndjson")


class InputError(Exception):
    """A document that cannot be read; the message names it."""


# (label, text or the error that replaced it, extra output fields, bytes consumed)
_Doc = tuple[str, "str | InputError", dict[str, Any], int]


def add_commands(subparsers: Any) -> None:
    """Register ``wm`` with its sub-commands ``detect`` and ``keys``."""
    wm = subparsers.add_parser("wm", help="watermark detection and keys")
    sub = wm.add_subparsers(dest="wm_command", metavar="WM_COMMAND", required=True)

    detect = sub.add_parser(
        "detect", help="test documents for the server's watermark (one JSON line each)")
    detect.add_argument("paths", nargs="+", metavar="PATH",
                        help="text file, JSONL file (`text` field) or - for stdin")
    detect.add_argument("--format", choices=["auto", "text", "jsonl"], default="auto",
                        help="input format (auto: by suffix; stdin by its first line)")
    detect.add_argument("--normalize", choices=[n for n in NORMALIZATIONS if n],
                        help="Unicode-normalise text before tokenising "
                             "(default: the watermark_normalize setting)")
    detect.add_argument("--scheme", choices=SCHEMES.names(),
                        help="detect with this scheme instead of watermark_scheme")
    detect.add_argument("--no-progress", action="store_true",
                        help="never show the progress bar")
    detect.set_defaults(func=_cmd_detect)

    keys = sub.add_parser("keys", help="list watermark key ids (never secrets)")
    keys.add_argument("action", nargs="?", choices=["list", "rotate"], default="list",
                      help="rotate: create a new active key id; old ids stay usable for "
                           "detection (a running server switches within a second)")
    keys.set_defaults(func=_cmd_keys)


def _fail(message: str) -> int:
    print(f"distillguard wm: {message}", file=sys.stderr)
    return 2


def _service(args: argparse.Namespace, *, create: bool) -> WatermarkService:
    return WatermarkService.from_settings(args.settings, create=create)


def _cmd_keys(args: argparse.Namespace) -> int:
    try:
        service = _service(args, create=args.action == "rotate")
        if args.action == "rotate":
            key = service.rotate()
            print(f"distillguard wm: new active watermark key {key['key_id']}",
                  file=sys.stderr)
        for key in service.keys():
            print(json.dumps(key))
    except KeyRingError as exc:
        return _fail(str(exc))
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    sources = []
    for raw in args.paths:
        if raw == "-":
            sources.append(raw)
            continue
        path = Path(raw)
        if not path.is_file() or not os.access(path, os.R_OK):
            what = "is a folder" if path.is_dir() else "cannot be read" if path.exists() \
                else "does not exist"
            return _fail(f"{raw} {what}")
        sources.append(raw)
    try:
        service = _service(args, create=False)
        scheme = None
        if args.scheme:
            scheme = scheme_from_settings(args.settings.replace(watermark_scheme=args.scheme))
        elif service.scheme is None:
            return _fail("watermark_scheme is none: pass --scheme NAME")
        service.tokenize("")  # load the tokenizer before the progress bar starts
    except (KeyRingError, ValueError, OSError) as exc:
        return _fail(str(exc))

    total = sum(Path(s).stat().st_size for s in sources if s != "-")
    from tqdm import tqdm

    # delay: the bar appears only when detection runs longer than a second (big inputs).
    bar = tqdm(total=total or None, unit="B", unit_scale=True, delay=1.0, file=sys.stderr,
               disable=args.no_progress, desc="wm detect")
    failures = 0

    def report(error: InputError) -> None:
        nonlocal failures
        failures += 1
        bar.clear()
        print(f"distillguard wm: {error}", file=sys.stderr)

    try:
        for source in sources:
            try:
                for label, text, extra, consumed in _documents(source, args.format):
                    bar.update(consumed)
                    if isinstance(text, InputError):
                        report(text)
                        continue
                    result = service.detect_text(text, normalize=args.normalize, scheme=scheme)
                    sys.stdout.write(json.dumps({"source": label, **extra, **result}) + "\n")
            except InputError as exc:
                report(exc)
    except BrokenPipeError:
        return 1
    finally:
        bar.close()
    sys.stdout.flush()
    if failures:
        print(f"distillguard wm: {failures} document(s) or file(s) could not be read",
              file=sys.stderr)
        return 1
    return 0


def _documents(source: str, fmt: str) -> Iterator[_Doc]:
    """(label, text, extra output fields, bytes consumed) for each document of a source."""
    if source == "-":
        yield from _stdin_documents(sys.stdin, fmt)
        return
    path = Path(source)
    jsonl = fmt == "jsonl" or (fmt == "auto" and path.suffix.lower() in _JSONL_SUFFIXES)
    try:
        if jsonl:
            with path.open(encoding="utf-8") as fh:
                yield from _jsonl_documents(source, fh)
        else:
            data = path.read_bytes()
            yield source, _decode(data, source), {}, len(data)
    except OSError as exc:
        raise InputError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text") from None


def _decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{label}: not UTF-8 text") from None


def _stdin_documents(stream: TextIO, fmt: str) -> Iterator[_Doc]:
    try:
        first = stream.readline()
        if fmt == "jsonl" or (fmt == "auto" and first.lstrip().startswith("{")):
            yield from _jsonl_documents("-", _chain(first, stream))
        else:
            text = first + stream.read()
            yield "-", text, {}, len(text.encode())
    except UnicodeDecodeError:
        raise InputError("-: standard input is not UTF-8 text") from None


def _chain(first: str, rest: TextIO) -> Iterator[str]:
    yield first
    yield from rest


def _bad(message: str, consumed: int) -> _Doc:
    """A document slot that could not be read: the caller reports it and goes on."""
    return "", InputError(message), {}, consumed


def _jsonl_documents(source: str, lines: Any) -> Iterator[_Doc]:
    for number, line in enumerate(lines, start=1):
        consumed = len(line.encode())
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield _bad(f"{source}:{number}: not valid JSON ({exc.msg})", consumed)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            yield _bad(f"{source}:{number}: no string field `text`", consumed)
            continue
        extra = {"line": number}
        if "id" in record:
            extra["id"] = record["id"]
        yield f"{source}:{number}", record["text"], extra, consumed
