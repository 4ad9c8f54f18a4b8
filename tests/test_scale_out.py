"""Scale-out, end to end in subprocesses: 3 gateways and 2 ``distillguard detect``
workers on PostgreSQL and NATS JetStream act on the same harvesters as one gateway, in
the same number of requests (±20%), also when a worker is killed with ``kill -9`` and
replaced midway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from test_durable_detection import harvest_prompt

pytestmark = pytest.mark.postgres
CLI = [sys.executable, "-m", "distillguard.cli"]
SETTLE_S = 1.2  # writer flush + JetStream + a checkpoint + a campaign round + policy cache
HARVESTERS = ("harvester-a", "harvester-d")


class Cluster:
    """Subprocesses of the CLI, all stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def env(self, **settings: object) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        base = {"backend": "echo", "model_name": "echo", "detection_embeddings": "false",
                "event_flush_interval": 0.02, "detection_interval": 0.3,
                "policy_cache_ttl": 0.2, "key_cache_ttl": 0.2, "max_tokens_limit": 512,
                "log_level": "warning",
                # A model answers a chain-of-thought task at length (detection measures
                # what is taken, so a 16-word answer is no harvest).
                "echo_tokens": 400}
        base.update(settings)
        env.update({f"DISTILLGUARD_{k.upper()}": str(v) for k, v in base.items()})
        return env

    def start(self, args: list[str], name: str, **settings: object) -> subprocess.Popen:
        out = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(CLI + args, env=self.env(**settings), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc.log = out  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def gateway(self, name: str, **settings: object) -> str:
        port = free_port()
        self.start(["serve", "--port", str(port)], name,
                   data_dir=self.tmp / name, **settings)
        return f"http://127.0.0.1:{port}"

    def worker(self, name: str, partitions: str, **settings: object) -> subprocess.Popen:
        return self.start(["detect", "--partitions", partitions, "--duration", "180"], name,
                          data_dir=self.tmp / name, **settings)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            p.log.close()  # type: ignore[attr-defined]


def wait_up(urls: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{url} did not start"
            time.sleep(0.2)


def harvest_until_refused(urls: list[str], keys: dict[str, str], *, limit: int = 120,
                          midway=None) -> dict[str, int | None]:
    """Each harvester sends 5 requests (spread over the gateways) per step, then waits for
    detection to settle; the request number at which each was first refused."""
    refused: dict[str, int | None] = {a: None for a in HARVESTERS}
    sent = dict.fromkeys(HARVESTERS, 0)
    turn = 0
    with httpx.Client(timeout=30) as http:
        while any(v is None for v in refused.values()) and max(sent.values()) < limit:
            for account in HARVESTERS:
                for _ in range(5):
                    if refused[account] is not None:
                        break
                    url = urls[turn % len(urls)]
                    turn += 1
                    sent[account] += 1
                    r = http.post(f"{url}/v1/chat/completions", headers={
                        "Authorization": f"Bearer {keys[account]}"}, json={
                        "model": "echo", "max_tokens": 512, "temperature": 0.7, "n": 2,
                        "messages": [{"role": "user",
                                      "content": harvest_prompt(sent[account])}]})
                    if r.status_code in (403, 429):
                        refused[account] = sent[account]
                    else:
                        assert r.status_code == 200, r.text
            if midway is not None and max(sent.values()) >= 10:
                midway()
                midway = None
            time.sleep(SETTLE_S)
    return refused


def make_keys(**settings: object) -> dict[str, str]:
    from distillguard.config import Settings
    from distillguard.telemetry.store import open_store

    with open_store(Settings.load(env={}, **settings)) as store:
        return {a: store.create_key(a)[1] for a in HARVESTERS}


def test_three_gateways_and_two_workers_act_like_one_gateway(pg_dsn, nats_names, tmp_path):
    from distillguard.detection.jetstream import partition_of

    # The two harvesters must land on different workers for the test to mean anything.
    assert {partition_of(a, 4) % 2 for a in HARVESTERS} == {0, 1}
    cluster = Cluster(tmp_path)
    try:
        one = cluster.gateway("single")
        shared = {"store": "postgres", "postgres_dsn": pg_dsn, "detection_mode": "external",
                  "event_stream": "nats", "detection_partitions": 4, **nats_names}
        gateways = [cluster.gateway(f"gw{i}", **shared) for i in range(3)]
        cluster.worker("w0", "0,2", **shared)
        w1 = cluster.worker("w1", "1,3", **shared)
        wait_up([one, *gateways])
        single = harvest_until_refused([one], make_keys(data_dir=tmp_path / "single"))
        scaled_keys = make_keys(store="postgres", postgres_dsn=pg_dsn)

        def kill_worker():
            os.kill(w1.pid, signal.SIGKILL)
            w1.wait(10)
            cluster.worker("w1-replacement", "1,3", **shared)
            log = tmp_path / "w1-replacement.log"
            deadline = time.monotonic() + 30
            while log.read_text().count("resumed from the checkpoint") < 2:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)

        scaled = harvest_until_refused(gateways, scaled_keys, midway=kill_worker)
    finally:
        cluster.stop()
    logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")}
    print(f"requests until refused: one gateway {single}, 3 gateways + 2 workers "
          f"(one killed and replaced) {scaled}")
    for account in HARVESTERS:
        assert single[account] is not None, logs
        assert scaled[account] is not None, (scaled, logs)
        assert abs(scaled[account] - single[account]) <= max(1, 0.2 * single[account]), (
            single, scaled)
    assert "resumed from the checkpoint" in logs["w1-replacement.log"]
