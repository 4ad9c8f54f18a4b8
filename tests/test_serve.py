"""`distillguard serve` as a process: events survive SIGTERM; settings are documented."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import free_port
from distillguard.cli import settings_markdown
from distillguard.config import Settings
from distillguard.telemetry.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented():
    assert (ROOT / "docs" / "settings.md").read_text() == settings_markdown(), (
        "docs/settings.md is stale: run `distillguard settings > docs/settings.md`")


def test_event_of_an_answered_request_survives_sigterm(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    # A long flush interval: the event can only reach the disk through the shutdown drain.
    env["DISTILLGUARD_EVENT_FLUSH_INTERVAL"] = "30"
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillguard.cli", "--data-dir", str(data), "serve",
         "--backend", "echo", "--model-name", "echo", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        settings = Settings.load(env={}, data_dir=str(data))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        store = open_store(settings)
        _, key = store.create_key("dora")
        response = httpx.post(url + "/v1/chat/completions",
                              headers={"authorization": f"Bearer {key}"},
                              json={"model": "echo",
                                    "messages": [{"role": "user", "content": "keep me"}]})
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is a clean exit here.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        events = list(store.iter_events())
        store.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(events) == 1
    assert events[0].account == "dora"
    assert "keep me" in events[0].prompt
