"""`distillguard events export | count` and the export functions behind them."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from distillguard.cli import main
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.export import FORMATS, export_events, parse_time
from distillguard.telemetry.sqlite_store import SQLiteStore

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def make_event(i: int, account: str) -> RequestEvent:
    return RequestEvent(
        ts=T0 + 60 * i, request_id=f"req-{i}", endpoint="/v1/chat/completions", status=200,
        latency_ms=3.5, account=account, key_id="key_1", model="m",
        params={"temperature": 0.5, "stop": ["\n", ","]}, prompt=f'say "hi", {i}\nplease',
        prompt_tokens=4, completion_tokens=9, stream=i % 2 == 1,
        watermark={"scheme": "green", "key_id": "wk1"} if i % 2 else None,
    )


@pytest.fixture
def data(tmp_path):
    events = [make_event(i, "acme" if i % 3 else "globex") for i in range(6)]
    with SQLiteStore(tmp_path) as store:
        store.write_events(events)
    return tmp_path, events


@pytest.fixture
def cli(monkeypatch, capsys):
    for name in list(os.environ):
        if name.startswith("DISTILLGUARD_"):
            monkeypatch.delenv(name)

    def run(data_dir, *argv: str) -> tuple[int, str, str]:
        rc = main(["--data-dir", str(data_dir), *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def test_jsonl_export_round_trips_every_event(data) -> None:
    path, events = data
    out = io.StringIO()
    with SQLiteStore(path) as store:
        assert export_events(store, out, fmt="jsonl") == 6
    lines = out.getvalue().splitlines()
    assert [RequestEvent.from_dict(json.loads(line)) for line in lines] == events


def test_csv_export_has_a_header_and_json_columns(data) -> None:
    path, events = data
    out = io.StringIO()
    with SQLiteStore(path) as store:
        assert export_events(store, out, fmt="csv") == 6
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 6
    assert rows[1]["prompt"] == events[1].prompt  # quotes, commas, newlines survive
    assert json.loads(rows[1]["params"]) == events[1].params
    assert json.loads(rows[1]["watermark"]) == events[1].watermark
    assert rows[0]["watermark"] == "" and rows[0]["error_type"] == ""
    assert float(rows[2]["ts"]) == events[2].ts


def test_only_working_formats_are_offered() -> None:
    assert set(FORMATS) == {"jsonl", "csv"}


@pytest.mark.parametrize("text,expected", [
    ("1714564800", T0),
    ("1714564800.5", T0 + 0.5),
    ("2024-05-01T12:00:00Z", T0),
    ("2024-05-01T12:00:00", T0),
    ("2024-05-01T14:00:00+02:00", T0),
    ("2024-05-01", T0 - 12 * 3600),
])
def test_parse_time_reads_unix_seconds_and_iso(text: str, expected: float) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "nan", "2024-13-01"])
def test_parse_time_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time(text)


def test_cli_export_to_a_file_with_filters(data, cli, tmp_path) -> None:
    path, events = data
    target = tmp_path / "out.jsonl"
    rc, out, err = cli(path, "events", "export", "--out", str(target), "--account", "acme",
                       "--since", "2024-05-01T12:02:00Z")
    assert rc == 0 and out == ""
    got = [json.loads(line)["request_id"] for line in target.read_text().splitlines()]
    assert got == ["req-2", "req-4", "req-5"]
    assert "exported 3 events" in err


def test_cli_export_csv_to_stdout_with_unix_since(data, cli) -> None:
    path, _ = data
    rc, out, _ = cli(path, "events", "export", "--format", "csv", "--since", str(T0 + 240))
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["request_id"] for r in rows] == ["req-4", "req-5"]


def test_cli_export_refuses_a_bad_time_and_format(data, cli, capsys) -> None:
    path, _ = data
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(path), "events", "export", "--since", "last tuesday"])
    assert exit_info.value.code == 2
    assert "neither Unix seconds nor an ISO 8601" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data-dir", str(path), "events", "export", "--format", "parquet"])


def test_cli_export_to_an_unwritable_path_fails_clearly(data, cli, tmp_path) -> None:
    path, _ = data
    rc, _, err = cli(path, "events", "export", "--out", str(tmp_path / "missing" / "x.jsonl"))
    assert rc == 1 and "cannot write" in err and "Traceback" not in err


def test_cli_count(data, cli, tmp_path) -> None:
    path, _ = data
    assert cli(path, "events", "count")[:2] == (0, "6\n")
    assert cli(tmp_path / "empty", "events", "count")[:2] == (0, "0\n")
