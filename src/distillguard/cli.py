"""The ``distillguard`` command: serve the gateway, manage keys, export events, and more.

Each package that offers commands exposes ``add_commands(subparsers)``; this module
builds the settings once and hands them to the chosen command as ``args.settings``.
Only the chosen command's module is imported (``COMMANDS`` lists every command with its
help, so ``distillguard --help`` imports none of them and starts in a fraction of a
second); a test checks that the modules register exactly the commands listed here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from distillguard.config import SETTINGS, Settings, SettingsError

# Every command a package module adds: name -> (module, help), in the order --help lists
# them. The help must be the one the module gives (tests/test_lean.py checks both).
COMMANDS: dict[str, tuple[str, str]] = {
    "keys": ("distillguard.telemetry.cli", "Create, list and revoke API keys."),
    "events": ("distillguard.telemetry.cli", "Export and count request events."),
    "wm": ("distillguard.watermark.cli", "watermark detection and keys"),
    "detection": ("distillguard.detection.cli", "harvest detection tools"),
    "detect": ("distillguard.detection.worker", "run detection as its own service "
               "(gateways with detection_mode = external feed it)"),
    "distill": ("distillguard.distill.cli", "harvest outputs through a gateway and train a "
                "student on them (what a distiller does)"),
    "forensics": ("distillguard.forensics.cli", "test a suspect model or corpus for our "
                  "watermark; write evidence"),
    "simulate": ("distillguard.simulate.cli", "run a traffic scenario against detection "
                 "and report metrics"),
    "analysts": ("distillguard.console.cli", "manage analyst log-ins for the console at "
                 "/console/"),
}
# The modules, in order; build_parser() with no command imports them all.
COMMAND_MODULES = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))


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
    from distillguard.backends.base import BACKENDS
    from distillguard.registry import RegistryError

    try:
        # Import the backend now, so that a missing extra is one line, not a traceback
        # from inside uvicorn's start-up.
        BACKENDS.get(settings.backend)
    except RegistryError as exc:
        print(f"distillguard: {exc}", file=sys.stderr)
        return 2
    if settings.asn_table and settings.detection and settings.detection_mode == "inprocess":
        # Read the table now (once: detection reuses it), so a bad line stops the start
        # with one line naming it, not a traceback from uvicorn's lifespan.
        from distillguard.detection.asn import load_asn_table

        load_asn_table(settings.asn_table)
    app = build_app(settings)
    print(f"distillguard: serving on http://{settings.host}:{settings.port}/v1 "
          f"(backend {settings.backend}, data in {settings.data_path})", file=sys.stderr,
          flush=True)
    # Header/body timeouts, head size and per-address caps: see gateway.limits.
    uvicorn.Server(server_config(app, settings)).run()
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``command`` one that imports only that command's module
    (``""``: none, enough for ``--help``); other commands are listed by name and help."""
    parser = argparse.ArgumentParser(
        prog="distillguard",
        description="A gateway that defends a model API against distillation.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the installed version and exit")
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

    if command is None:
        modules: tuple[str, ...] = COMMAND_MODULES
    else:
        modules = (COMMANDS[command][0],) if command in COMMANDS else ()
    for name in modules:
        importlib.import_module(name).add_commands(sub)
    for name, (_, text) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=text)
    return parser


class _Version(argparse.Action):
    # argparse's own "version" action wants the string while the parser is built, and
    # reading package metadata would then slow every start, --help included.
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        import distillguard

        print(f"distillguard {distillguard.__version__}")
        parser.exit()


_VALUED_OPTIONS = {"--config", "--data-dir"}


def _command_word(argv: Sequence[str]) -> str:
    """The command named in ``argv`` ("" when there is none), skipping global options."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


_OVERRIDES = ("data_dir", "host", "port", "backend", "upstream_url", "model_name")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_word(argv))
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
    except SettingsError as exc:  # one a command finds, e.g. a bad asn_table line
        print(f"distillguard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
