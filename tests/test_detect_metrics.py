"""``distillguard detect --metrics-port``: a separate worker serves the detection series an
in-process gateway exports on /metrics, per partition, and they move as events arrive."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import free_port
from distillguard.config import Settings
from distillguard.telemetry.events import RequestEvent
from distillguard.telemetry.store import open_store

CLI = [sys.executable, "-m", "distillguard.cli"]
SERIES = ("distillguard_detection_lag_events", "distillguard_detection_lag_seconds",
          "distillguard_detection_events_total", "distillguard_detection_log_position",
          "distillguard_detection_checkpoint_age_seconds")
SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def _events(account: str, first: int, n: int) -> list[RequestEvent]:
    return [RequestEvent(ts=time.time(), request_id=f"{account}-{i}",
                         endpoint="/v1/chat/completions", status=200, latency_ms=50,
                         account=account, client_addr="203.0.113.9", user_agent="t",
                         params={}, prompt=f"question {i}", prompt_tokens=5,
                         completion_tokens=20) for i in range(first, first + n)]


def _env(values: dict[str, object]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    env.update({f"DISTILLGUARD_{k.upper()}": str(v) for k, v in values.items()})
    return env


def _scrape(url: str) -> tuple[str, dict[str, float]]:
    r = httpx.get(url, timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in r.text.splitlines():
        if not line.startswith("#"):
            name, labels, value = SAMPLE.match(line).groups()
            samples[name + (labels or "")] = float(value)
    return r.text, samples


def _wait_for(url: str, want: dict[str, float], timeout: float = 60.0
              ) -> tuple[str, dict[str, float]]:
    deadline = time.monotonic() + timeout
    samples: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            text, samples = _scrape(url)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if all(samples.get(k) == v for k, v in want.items()):
            return text, samples
        time.sleep(0.2)
    raise AssertionError(f"never saw {want}; last scrape {samples}")


def _run(tmp: Path, values: dict[str, object], *args: str) -> subprocess.Popen:
    out = open(tmp / "worker.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(CLI + ["detect", "--duration", "120", *args], env=_env(values),
                            stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


BASE = {"detection_embeddings": "false", "detection_interval": 0.3,
        "detection_checkpoint_interval": 0.3, "log_level": "warning"}


def test_a_store_worker_serves_the_gateway_series_and_they_move(tmp_path):
    values = dict(BASE, data_dir=tmp_path / "data")
    with open_store(Settings.load(env={}, **values)) as store:
        store.write_events(_events("alice", 0, 50))
    port = free_port()
    proc = _run(tmp_path, values, "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        text, samples = _wait_for(url, {"distillguard_detection_events_total": 50,
                                        "distillguard_detection_log_position": 50,
                                        "distillguard_detection_lag_events": 0})
        for name in SERIES:  # the in-process gateway's series, each once, one sample
            assert text.count(f"# TYPE {name} ") == 1
            assert name in samples
        assert "# TYPE distillguard_detection_events_total counter" in text
        with open_store(Settings.load(env={}, **values)) as store:
            store.write_events(_events("bob", 0, 30))
        _, samples = _wait_for(url, {"distillguard_detection_events_total": 80,
                                     "distillguard_detection_log_position": 80})
        deadline = time.monotonic() + 30
        while samples["distillguard_detection_checkpoint_age_seconds"] < 0:
            assert time.monotonic() < deadline, "no checkpoint shown"
            time.sleep(0.2)
            _, samples = _scrape(url)
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
    finally:
        _stop(proc)


def test_a_jetstream_worker_labels_each_partition(tmp_path, nats_names):
    from distillguard.detection.jetstream import NatsLink, PublishingStore, partition_of

    values = dict(BASE, data_dir=tmp_path / "data", event_stream="nats",
                  detection_partitions=2, detection_warmup_hours=1, **nats_names)
    settings = Settings.load(env={}, **values)
    by_part = {p: next(f"acct-{i}" for i in range(100) if partition_of(f"acct-{i}", 2) == p)
               for p in (0, 1)}
    store = open_store(settings)
    link = NatsLink(settings.nats_url.reveal())
    publishing = PublishingStore(store, link, settings)
    port = free_port()
    proc = None
    try:
        publishing.write_events(_events(by_part[0], 0, 20) + _events(by_part[1], 0, 30))
        proc = _run(tmp_path, values, "--metrics-port", str(port))
        url = f"http://127.0.0.1:{port}/metrics"
        _, samples = _wait_for(url, {
            'distillguard_detection_events_total{partition="0"}': 20,
            'distillguard_detection_events_total{partition="1"}': 30,
            'distillguard_detection_lag_events{partition="0"}': 0})
        assert "distillguard_detection_events_total" not in samples  # no unlabelled sample
        publishing.write_events(_events(by_part[1], 30, 15))
        _wait_for(url, {'distillguard_detection_events_total{partition="0"}': 20,
                        'distillguard_detection_events_total{partition="1"}': 45})
    finally:
        if proc is not None:
            _stop(proc)
        link.close()
        store.close()


def test_metrics_host_without_a_port_is_refused(tmp_path):
    done = subprocess.run(CLI + ["--data-dir", str(tmp_path), "detect", "--metrics-host",
                                 "0.0.0.0"], env=_env({}), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr == "distillguard: --metrics-host needs --metrics-port\n"
