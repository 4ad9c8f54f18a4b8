"""``distillguard analysts create|list|delete``: console log-ins for named analysts."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any


def add_commands(subparsers: Any) -> None:
    """Register ``analysts``."""
    p = subparsers.add_parser(
        "analysts", help="manage analyst log-ins for the console at /console/",
        description="Analysts log in to /console/ with a name and password (argon2id "
                    "hashed in data_dir/console.db); their actions are audited under "
                    "their name.")
    sub = p.add_subparsers(dest="analysts_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="add an analyst; the password is prompted "
                            "for, or read from the first line of stdin when it is not a "
                            "terminal")
    create.add_argument("name")
    create.set_defaults(func=_create)
    lst = sub.add_parser("list", help="list analysts")
    lst.set_defaults(func=_list)
    delete = sub.add_parser("delete", help="remove an analyst and end their sessions")
    delete.add_argument("name")
    delete.set_defaults(func=_delete)


def _store(args: argparse.Namespace) -> Any:
    from distillguard.console.auth import AnalystStore

    return AnalystStore(args.settings.data_path)


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password for the new analyst: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def _create(args: argparse.Namespace) -> int:
    try:
        password = _read_password()
        _store(args).create(args.name, password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"analyst {args.name} created; log in at /console/login")
    return 0


def _list(args: argparse.Namespace) -> int:
    for name, created in _store(args).names():
        print(f"{name}\tcreated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(created))}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    if not _store(args).delete(args.name):
        print(f"error: no analyst {args.name!r}", file=sys.stderr)
        return 1
    print(f"analyst {args.name} deleted")
    return 0
