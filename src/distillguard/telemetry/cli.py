"""Commands ``distillguard keys ...`` and ``distillguard events ...``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillguard.telemetry.export import FORMATS, export_events, parse_time
from distillguard.telemetry.store import open_store

if TYPE_CHECKING:
    from distillguard.telemetry.keys import KeyRecord
    from distillguard.telemetry.store import Store


class _StoreUnavailable(Exception):
    pass


def _err(message: str) -> None:
    print(f"distillguard: {message}", file=sys.stderr)


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[Store]:
    settings = args.settings
    try:
        store = open_store(settings)
    except Exception as exc:  # noqa: BLE001 - any failure to open is a user-facing error
        _err(f"cannot open the {settings.store} store: {exc}")
        raise _StoreUnavailable from None
    try:
        yield store
    finally:
        store.close()


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_arg(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _handler(body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command body so that an unreachable store is a message and exit 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(body(args))
        except _StoreUnavailable:
            return 1

    run.__doc__ = body.__doc__
    return run


# --- keys ---------------------------------------------------------------------------
def _keys_create(args: argparse.Namespace) -> int:
    with _store(args) as store:
        try:
            record, plaintext = store.create_key(args.account, name=args.name)
        except ValueError as exc:
            _err(str(exc))
            return 2
    label = f" (name {record.name!r})" if record.name else ""
    print(
        f"Created key {record.key_id} for account {record.account!r}{label}. "
        "Copy it now: it is not shown again."
    )
    print(plaintext)
    return 0


def _key_dict(record: KeyRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["active"] = record.active
    return data


def _keys_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        records = store.list_keys(args.account)
    if args.json:
        print(json.dumps([_key_dict(r) for r in records], indent=2))
        return 0
    if not records:
        print("no keys" + (f" for account {args.account!r}" if args.account else ""),
              file=sys.stderr)
        return 0
    header = ("KEY_ID", "ACCOUNT", "PREFIX", "NAME", "CREATED", "REVOKED")
    rows = [
        (r.key_id, r.account, r.prefix + "...", r.name or "-", _iso(r.created_at),
         _iso(r.revoked_at))
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    with _store(args) as store:
        record = store.get_key(args.key_id)
        if record is None:
            _err(f"no key with id {args.key_id!r} (see `distillguard keys list`)")
            return 1
        if record.revoked_at is not None:
            print(f"Key {record.key_id} of account {record.account!r} was already revoked "
                  f"at {_iso(record.revoked_at)}.")
            return 0
        store.revoke_key(record.key_id)
    print(f"Revoked key {record.key_id} of account {record.account!r}.")
    return 0


# --- events -------------------------------------------------------------------------
def _events_export(args: argparse.Namespace) -> int:
    with _store(args) as store:
        options = dict(fmt=args.format, since=args.since, until=args.until,
                       account=args.account)
        if args.out is None:
            try:
                count = export_events(store, sys.stdout, **options)
                sys.stdout.flush()
            except BrokenPipeError:
                # The reader went away (`| head`): not an error of ours.
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the final flush
                return 0
            print(f"exported {count} events", file=sys.stderr)
            return 0
        path = Path(args.out)
        try:
            with path.open("w", encoding="utf-8", newline="") as out:
                count = export_events(store, out, **options)
        except OSError as exc:
            _err(f"cannot write {path}: {exc.strerror or exc}")
            return 1
    print(f"exported {count} events to {path}", file=sys.stderr)
    return 0


def _events_count(args: argparse.Namespace) -> int:
    with _store(args) as store:
        print(store.count_events())
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``keys`` and ``events`` to the top-level command parser."""
    keys = subparsers.add_parser("keys", help="Create, list and revoke API keys.",
                                 description="Create, list and revoke API keys.")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    create = keys_sub.add_parser(
        "create", help="Create a key (and the account if new); prints the key once.",
        description="Create an API key. The last line of output is the key itself, "
        "shown only this once.")
    create.add_argument("--account", required=True, help="Account that owns the key.")
    create.add_argument("--name", help="A label for the key (e.g. where it is used).")
    create.set_defaults(func=_handler(_keys_create))

    listing = keys_sub.add_parser("list", help="List keys (never the keys themselves).")
    listing.add_argument("--account", help="Only this account's keys.")
    listing.add_argument("--json", action="store_true", help="Print a JSON array.")
    listing.set_defaults(func=_handler(_keys_list))

    revoke = keys_sub.add_parser(
        "revoke", help="Revoke a key by id; a running gateway refuses it at once.")
    revoke.add_argument("key_id", metavar="KEY_ID", help="The key's id (key_...).")
    revoke.set_defaults(func=_handler(_keys_revoke))

    events = subparsers.add_parser("events", help="Export and count request events.",
                                   description="Export and count request events.")
    events_sub = events.add_subparsers(dest="events_command", required=True,
                                       metavar="COMMAND")

    export = events_sub.add_parser("export", help="Stream events as JSON lines or CSV.")
    export.add_argument("--format", choices=list(FORMATS), default="jsonl",
                        help="Output format (default: jsonl).")
    export.add_argument("--out", metavar="PATH", help="Write to PATH instead of stdout.")
    export.add_argument("--since", type=_time_arg, metavar="TIME",
                        help="Only events at or after TIME (Unix seconds or ISO 8601; UTC "
                        "unless the time says otherwise).")
    export.add_argument("--until", type=_time_arg, metavar="TIME",
                        help="Only events before TIME.")
    export.add_argument("--account", help="Only this account's events.")
    export.set_defaults(func=_handler(_events_export))

    count = events_sub.add_parser("count", help="Print how many events are stored.")
    count.set_defaults(func=_handler(_events_count))
