"""Export request events as JSON lines or CSV, streaming (memory stays flat)."""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TextIO

from distillguard.telemetry.rows import EVENT_COLUMNS, JSON_COLUMNS, dump_json

if TYPE_CHECKING:
    from distillguard.telemetry.events import RequestEvent
    from distillguard.telemetry.store import Store


def write_jsonl(events: Iterable[RequestEvent], out: TextIO) -> int:
    """One JSON object per line, the fields of ``RequestEvent``; returns the count."""
    count = 0
    for event in events:
        out.write(dump_json(event.to_dict()))
        out.write("\n")
        count += 1
    return count


def write_csv(events: Iterable[RequestEvent], out: TextIO) -> int:
    """A header row, then one row per event; ``params``/``watermark`` as JSON text and
    missing values as empty cells. Returns the count."""
    writer = csv.writer(out)
    writer.writerow(EVENT_COLUMNS)
    count = 0
    for event in events:
        row = []
        for column in EVENT_COLUMNS:
            value = getattr(event, column)
            if column in JSON_COLUMNS:
                value = "" if value is None else dump_json(value)
            elif value is None:
                value = ""
            row.append(value)
        writer.writerow(row)
        count += 1
    return count


# Export formats by name. Parquet is absent on purpose: it would need pyarrow, which is
# not a dependency; every name here works with the base install.
FORMATS: dict[str, Callable[[Iterable[RequestEvent], TextIO], int]] = {
    "jsonl": write_jsonl,
    "csv": write_csv,
}


def export_events(
    store: Store,
    out: TextIO,
    *,
    fmt: str = "jsonl",
    since: float | None = None,
    until: float | None = None,
    account: str | None = None,
) -> int:
    """Write the store's events (filtered like ``Store.iter_events``) to ``out`` in
    format ``fmt``; returns how many were written."""
    try:
        write = FORMATS[fmt]
    except KeyError:
        raise ValueError(
            f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}"
        ) from None
    return write(store.iter_events(since=since, until=until, account=account), out)


def parse_time(text: str) -> float:
    """Unix time from a number of seconds or an ISO 8601 date/time (UTC unless it says
    otherwise): ``1714564800``, ``2024-05-01``, ``2024-05-01T12:00:00+02:00``."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither Unix seconds nor an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()
