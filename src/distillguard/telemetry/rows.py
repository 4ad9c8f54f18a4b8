"""How a ``RequestEvent`` maps to a table row, shared by every SQL store."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import orjson

from distillguard.telemetry.events import RequestEvent

# Column order of the events table; ``params`` and ``watermark`` hold JSON.
EVENT_COLUMNS: tuple[str, ...] = (
    "ts",
    "request_id",
    "endpoint",
    "status",
    "latency_ms",
    "account",
    "key_id",
    "client_addr",
    "user_agent",
    "model",
    "params",
    "prompt",
    "prompt_tokens",
    "completion_tokens",
    "stream",
    "error_type",
    "error_code",
    "watermark",
    "features",
)
JSON_COLUMNS = frozenset({"params", "watermark", "features"})
# api_keys columns in the order of ``KeyRecord``'s fields: ``KeyRecord(*row)``.
KEY_COLUMNS = "key_id, account, prefix, created_at, revoked_at, name"
_PARAMS_AT = EVENT_COLUMNS.index("params")
_WATERMARK_AT = EVENT_COLUMNS.index("watermark")
_FEATURES_AT = EVENT_COLUMNS.index("features")
_STREAM_AT = EVENT_COLUMNS.index("stream")


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """``value`` with lone surrogates replaced by U+FFFD.

    Python's JSON parser accepts ``"\\ud800"`` and yields a string that no UTF-8
    database (nor orjson) will take; one such prompt must not make its batch fail on
    every retry and stall the writer. ASCII text, the common case, is returned at once.
    """
    if value.isascii():
        return value
    return _SURROGATE.sub("\ufffd", value)


def dump_json(value: Any) -> str:
    """JSON text for a params/watermark value.

    Client-sent params are arbitrary JSON; orjson refuses a few values Python holds
    (integers beyond 64 bits, lone surrogates), and one unwritable event must never
    stall the writer, so those fall back to the standard library, which writes anything
    (``default=str``), and the result is cleaned of surrogates.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        return clean_text(json.dumps(value, default=str, ensure_ascii=False))


def event_to_row(event: RequestEvent) -> list[Any]:
    """The event's values in ``EVENT_COLUMNS`` order, JSON columns as text."""
    row = [getattr(event, column) for column in EVENT_COLUMNS]
    for i, value in enumerate(row):
        if isinstance(value, str):
            row[i] = clean_text(value)
    row[_PARAMS_AT] = dump_json(event.params or {})
    row[_WATERMARK_AT] = None if event.watermark is None else dump_json(event.watermark)
    row[_FEATURES_AT] = None if event.features is None else dump_json(event.features)
    row[_STREAM_AT] = bool(event.stream)
    return row


def row_to_event(row: Sequence[Any]) -> RequestEvent:
    """A ``RequestEvent`` from a row in ``EVENT_COLUMNS`` order.

    JSON columns may arrive as text (SQLite) or already decoded (PostgreSQL jsonb).
    """
    values = dict(zip(EVENT_COLUMNS, row, strict=True))
    for column in JSON_COLUMNS:
        if isinstance(values[column], str | bytes):
            values[column] = orjson.loads(values[column])
    values["params"] = values["params"] or {}
    values["stream"] = bool(values["stream"])
    return RequestEvent(**values)


def select_events(placeholder: str, *, since: float | None, until: float | None,
                  account: str | None) -> tuple[str, list[float | str]]:
    """The SELECT of ``Store.iter_events`` and its arguments, in arrival order.

    ``placeholder`` is the driver's parameter marker (``?`` for sqlite3, ``%s`` for
    psycopg); the filters are the same for every store.
    """
    where: list[str] = []
    args: list[float | str] = []
    for column, op, value in (("ts", ">=", since), ("ts", "<", until),
                              ("account", "=", account)):
        if value is not None:
            where.append(f"{column} {op} {placeholder}")
            args.append(value)
    query = f"SELECT {', '.join(EVENT_COLUMNS)} FROM request_events"
    if where:
        query += " WHERE " + " AND ".join(where)
    return query + " ORDER BY ts, id", args


def select_events_after(placeholder: str) -> str:
    """The SELECT of ``Store.events_after``: (id, EVENT_COLUMNS...) after an id."""
    return (f"SELECT id, {', '.join(EVENT_COLUMNS)} FROM request_events "
            f"WHERE id > {placeholder} ORDER BY id LIMIT {placeholder}")


FIRST_ID_SINCE = "SELECT min(id) FROM request_events WHERE ts >= {p}"
LAST_ID = "SELECT coalesce(max(id), 0) FROM request_events"

def recent_events_sql(placeholder: str, account: str, limit: int) -> tuple[str, list[Any]]:
    """The SELECT of ``Store.recent_events``: one account's latest events, newest first
    (the ``(account, ts)`` index answers it without reading older rows)."""
    return (f"SELECT {', '.join(EVENT_COLUMNS)} FROM request_events WHERE account = "
            f"{placeholder} ORDER BY ts DESC, id DESC LIMIT {placeholder}", [account, limit])


def histogram_sql(placeholder: str, *, since: float, until: float, bucket_s: float,
                  account: str | None, floor: str) -> tuple[str, list[Any]]:
    """The SELECT of ``Store.event_histogram``: (bucket index, requests, distinct
    accounts) per ``bucket_s`` seconds from ``since``, over the ``ts`` index.

    ``floor`` turns a non-negative float expression ``{}`` into an integer: SQLite's
    CAST truncates, PostgreSQL's rounds, so each store says how."""
    where = f"ts >= {placeholder} AND ts < {placeholder}"
    args: list[Any] = [since, until]
    if account is not None:
        where += f" AND account = {placeholder}"
        args.append(account)
    bucket = floor.format(f"(ts - {placeholder}) / {placeholder}")
    return (f"SELECT {bucket} AS b, count(*), count(DISTINCT account) FROM request_events "
            f"WHERE {where} GROUP BY b ORDER BY b", [since, bucket_s, *args])
