"""The ``distillguard`` command: serve the gateway, manage keys, export events, and more.

Each package that offers commands exposes ``add_commands(subparsers)``; this module
builds the settings once and hands them to the chosen command as ``args.settings``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from distillguard.config import SETTINGS, Settings, SettingsError

# Packages whose commands the CLI offers, in the order `--help` lists them.
COMMAND_MODULES = (
    "distillguard.telemetry.cli",
    "distillguard.watermark.cli",
    "distillguard.detection.cli",
    "distillguard.detection.worker",
    "distillguard.distill.cli",
    "distillguard.forensics.cli",
    "distillguard.simulate.cli",
    "distillguard.console.cli",
)


def settings_markdown() -> str:
    """Every setting with its type, default and help, as docs/settings.md holds them."""
    lines = [
        "# Settings",
        "",
        "Read at start-up, in this order of precedence: command-line flags, environment",
        "variables (`DISTILLGUARD_<NAME>`, e.g. `DISTILLGUARD_DATA_DIR`), the TOML file named",
        "by `--config` or `DISTILLGUARD_CONFIG` (keys at the top level or under",
        "`[distillguard]`), then the defaults below. Regenerate this page with",
        "`distillguard settings > docs/settings.md`.",
        "",
        "| name | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for s in SETTINGS:
        default = "(secret, empty)" if s.type.__name__ == "Secret" else repr(s.default)
        # Choices read from a registry are left out: installed plugins would change them.
        allowed = "" if callable(s.choices) else s.allowed()
        meaning = f"{s.help} Allowed: {allowed}." if allowed else s.help
        lines.append(f"| `{s.name}` | {s.type.__name__} | `{default}` | {meaning} |")
    return "\n".join(lines) + "\n"


def _cmd_settings(args: argparse.Namespace) -> int:
    sys.stdout.write(settings_markdown())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from distillguard.gateway.app import build_app
    from distillguard.gateway.limits import server_config

    settings: Settings = args.settings
    app = build_app(settings)
    print(f"distillguard: serving on http://{settings.host}:{settings.port}/v1 "
          f"(backend {settings.backend}, data in {settings.data_path})", file=sys.stderr,
          flush=True)
    # Header/body timeouts, head size and per-address caps: see gateway.limits.
    uvicorn.Server(server_config(app, settings)).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillguard",
        description="A gateway that defends a model API against distillation.")
    parser.add_argument("--config", help="TOML settings file (default: $DISTILLGUARD_CONFIG)")
    parser.add_argument("--data-dir", help="folder for state (default: "
                        "$DISTILLGUARD_DATA_DIR or ~/.local/share/distillguard)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--backend", help="local, upstream, echo or one an installed "
                       "package registers (checked with the other settings)")
    serve.add_argument("--upstream-url", help="base URL of an OpenAI-compatible API (with /v1)")
    serve.add_argument("--model-name", help="public model name of the local backend")
    serve.set_defaults(func=_cmd_serve)

    show = sub.add_parser("settings", help="print every setting with its default and help")
    show.set_defaults(func=_cmd_settings)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


_OVERRIDES = ("data_dir", "host", "port", "backend", "upstream_url", "model_name")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {name: getattr(args, name, None) for name in _OVERRIDES}
    try:
        args.settings = Settings.load(args.config, **overrides)
    except SettingsError as exc:
        print(f"distillguard: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
