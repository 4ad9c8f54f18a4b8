"""Settings: declared once, with help text, read at start-up (env > file > default).

One ``Settings`` object is built when a command starts and passed down; nothing else
reads the environment. Each setting is a ``Setting`` row in ``SETTINGS`` and its
documentation lives in ``docs/settings.md`` (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "DISTILLGUARD_"


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SettingsError(ValueError):
    """A setting has a value of the wrong type or out of range; the message names it."""


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "distillguard")


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "Address the gateway listens on."),
    Setting("port", int, 8000, "Port the gateway listens on."),
    Setting("data_dir", str, None, "Folder for state (SQLite databases, watermark master "
            "secret). Default: $XDG_DATA_HOME/distillguard or ~/.local/share/distillguard."),
    Setting("model_cache_dir", str, None, "Folder for the converted embedded model. "
            "Default: $XDG_CACHE_HOME/distillguard/models or ~/.cache/distillguard/models."),
    Setting("backend", str, "local", "Which backend serves requests: `local` (the "
            "embedded model, or `local_model_path`) or `upstream` (any OpenAI-compatible "
            "server at `upstream_url`)."),
    Setting("model_name", str, "smollm2-135m-instruct", "Public model name that the "
            "local backend serves."),
    Setting("local_model_path", str, "", "A transformers model folder to serve instead "
            "of the embedded model (local backend)."),
    Setting("local_max_batch", int, 16, "Most sequences the local backend decodes in one "
            "batch."),
    Setting("local_threads", int, 0, "Torch threads for the local backend (0: torch's "
            "default)."),
    Setting("upstream_url", str, "", "Base URL of the upstream OpenAI-compatible API, "
            "including /v1 (upstream backend)."),
    Setting("upstream_api_key", Secret, Secret(""), "API key sent to the upstream."),
    Setting("upstream_models", str, "", "Model name map for the upstream backend: "
            "`public=upstream,public2=upstream2`. Empty: ask the upstream's /v1/models."),
    Setting("upstream_timeout", float, 60.0, "Seconds to wait for the upstream before "
            "answering 504."),
    Setting("upstream_max_connections", int, 100, "Pooled connections to the upstream."),
    Setting("admin_token", Secret, Secret(""), "Bearer token for /admin/. Empty: the "
            "admin API answers 403 to everyone."),
    Setting("max_body_bytes", int, 1_048_576, "Largest request body accepted (413 above)."),
    Setting("max_tokens_limit", int, 4096, "Largest max_tokens a request may ask for."),
    Setting("default_max_tokens", int, 256, "max_tokens when a request gives none."),
    Setting("max_n", int, 4, "Largest n (choices per request)."),
    Setting("rate_limit_rpm", int, 0, "Requests per minute per key (0: unlimited)."),
    Setting("rate_limit_tpm", int, 0, "Tokens (prompt + completion) per minute per key "
            "(0: unlimited)."),
    Setting("trust_forwarded_for", bool, False, "Take the client address from the first "
            "X-Forwarded-For entry (only behind a proxy you run, which sets it)."),
    Setting("retain_prompts", bool, True, "Store prompt text in request events."),
    Setting("store", str, "sqlite", "Event and account store: `sqlite` (in data_dir) or "
            "`postgres` (at `postgres_dsn`)."),
    Setting("postgres_dsn", Secret, Secret(""), "PostgreSQL connection string for "
            "store = postgres."),
    Setting("event_batch_size", int, 500, "Events written per batch by the event writer."),
    Setting("event_flush_interval", float, 0.2, "Seconds the event writer waits to fill "
            "a batch before writing what it has."),
    Setting("event_queue_size", int, 100_000, "Events held in memory before requests "
            "wait for the writer."),
    Setting("key_cache_ttl", float, 1.0, "Seconds a key lookup is cached when the store "
            "cannot tell the gateway that keys changed (PostgreSQL)."),
    Setting("log_level", str, "info", "Log level: debug, info, warning, error."),
    # --- watermark settings (watermark engineer edits only this block) ---
    # --- end watermark settings ---
    # --- local backend settings (local backend engineer edits only this block) ---
    # --- end local backend settings ---
    # --- rate limit / upstream settings (upstream engineer edits only this block) ---
    # --- end rate limit / upstream settings ---
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    if value is None:
        return None
    want = setting.type
    try:
        if want is Secret:
            return value if isinstance(value, Secret) else Secret(str(value))
        if want is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if want is int and isinstance(value, bool):
            raise ValueError(value)
        return want(value)
    except (TypeError, ValueError):
        raise SettingsError(
            f"setting {setting.name!r} from {source}: expected {want.__name__}, got {value!r}"
        ) from None


@dataclasses.dataclass(frozen=True)
class Settings:
    """All settings of one running distillguard, immutable once built."""

    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(f"no setting named {name!r}") from None

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"Settings({inner})"

    @property
    def data_path(self) -> Path:
        return Path(self.values["data_dir"] or _default_data_dir())

    def replace(self, **changes: Any) -> Settings:
        values = dict(self.values)
        for name, value in changes.items():
            if name not in _BY_NAME:
                raise SettingsError(f"unknown setting {name!r}")
            values[name] = _coerce(_BY_NAME[name], value, "code")
        return Settings(values)

    @classmethod
    def load(
        cls,
        file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings: ``overrides`` (command-line flags) > env > file > default.

        ``file`` defaults to ``$DISTILLGUARD_CONFIG`` when set. Unknown keys in the file
        or ``DISTILLGUARD_*`` variables that name no setting are errors, so a typo never
        silently leaves a default in force.
        """
        env = os.environ if env is None else env
        values = {s.name: s.default for s in SETTINGS}
        file = file or env.get(ENV_PREFIX + "CONFIG")
        if file:
            path = Path(file)
            try:
                data = tomllib.loads(path.read_text())
            except OSError as exc:
                raise SettingsError(f"cannot read settings file {path}: {exc}") from None
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from None
            section = data.get("distillguard", data)
            for key, value in section.items():
                if isinstance(value, dict):
                    continue  # sections that other layers own (e.g. [policy])
                if key not in _BY_NAME:
                    raise SettingsError(f"settings file {path}: unknown setting {key!r}")
                values[key] = _coerce(_BY_NAME[key], value, str(path))
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in _BY_NAME:
                raise SettingsError(f"environment variable {key} names no setting")
            values[name] = _coerce(_BY_NAME[name], raw, key)
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in _BY_NAME:
                raise SettingsError(f"unknown setting {name!r}")
            values[name] = _coerce(_BY_NAME[name], value, "command line")
        return cls(values)
