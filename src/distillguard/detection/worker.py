"""``distillguard detect``: detection as its own service, fed by any number of gateways.

Gateways run with ``detection_mode = external`` and only read the shared policy store;
this service writes actions to it.

- ``event_stream = ""``: one worker tails the shared store (PostgreSQL) by id, as
  ``serve`` does in-process, and runs the rules itself.
- ``event_stream = nats``: each worker reads its partitions of the JetStream event stream
  (``--partitions``; by default all of them), one pipeline per partition, and
  checkpoints each partition's state every ``detection_interval``. The campaign job
  (``--campaign-job``; by default in the worker that reads partition 0) merges the
  partitions' latest checkpoints into one view of every account, computes population
  baselines and campaigns over all of them and applies the policy rules. So the
  cross-account job sees every account's profile, and an account's own signals are
  scored against the whole population, not against its partition.

A worker killed with ``kill -9`` loses only what it observed since its checkpoints; a
replacement started with the same partitions restores them and reads the rest again.

``--metrics-port`` serves ``GET /metrics``: the detection series that an in-process
gateway exports (``DetectionRunner.metrics_lines``), one sample per partition.
"""

from __future__ import annotations

import argparse
import http.server
import logging
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distillguard.detection.checkpoint import CheckpointError, CheckpointStore, load_state
from distillguard.detection.service import DetectionRunner, metrics_lines

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.detection.pipeline import DetectionPipeline
    from distillguard.policy.engine import PolicyEngine

log = logging.getLogger("distillguard.detection")


def partition_name(partition: int) -> str:
    """The checkpoint name of a partition's state."""
    return f"partition-{partition}"


class CampaignJob:
    """Merges every partition's checkpointed accounts into one pipeline and runs the
    periodic job (baselines, campaigns, rules) over all of them."""

    def __init__(self, pipeline: DetectionPipeline, checkpoints: CheckpointStore,
                 partitions: int, policy: PolicyEngine | None) -> None:
        self.pipeline = pipeline
        self.checkpoints = checkpoints
        self.partitions = partitions
        self.policy = policy
        self._loaded: dict[str, tuple[int, float]] = {}
        self._accounts: dict[str, Any] = {}
        self.rounds = 0

    def reload(self) -> int:
        """Load the partitions whose checkpoint moved; returns how many did."""
        positions = self.checkpoints.positions()
        moved = 0
        for p in range(self.partitions):
            name = partition_name(p)
            if name not in positions or positions[name] == self._loaded.get(name):
                continue
            saved = self.checkpoints.load(name)
            if saved is None:
                continue
            try:
                _, state = load_state(saved.blob, self.pipeline)
            except CheckpointError as exc:
                log.warning("campaign job: checkpoint %s skipped (%s)", name, exc)
                continue
            self._accounts[name] = state.get("_accounts", {})
            self._loaded[name] = (saved.position, saved.saved_at)
            moved += 1
        if moved:
            merged: OrderedDict[str, Any] = OrderedDict()
            for accounts in self._accounts.values():
                merged.update(accounts)
            with self.pipeline._lock:
                self.pipeline._accounts = merged
        return moved

    def round(self) -> list[Any]:
        """Reload, refresh over every account, apply the rules; returns actions set."""
        from distillguard.detection.driver import run_round

        self.reload()
        _, actions = run_round(self.pipeline, self.policy, time.time)
        self.rounds += 1
        return actions


def _pipeline(settings: Settings, store: Any, embedder: Any) -> DetectionPipeline:
    from distillguard.detection.pipeline import DetectionPipeline

    topic_map = None
    if embedder is not None:
        from distillguard.detection.topics import load_topic_map

        topic_map = load_topic_map()
    return DetectionPipeline(settings, embedder=embedder, topic_map=topic_map, store=store)


def _embedder(settings: Settings) -> Any:
    if not settings.detection_embeddings:
        return None
    from distillguard.detection.embedder import settings_embedder

    return settings_embedder(settings)


class Worker:
    """One ``distillguard detect`` process: its runners, their checkpoints, maybe the
    campaign job, on one loop until ``stop``."""

    def __init__(self, settings: Settings, *, partitions: list[int] | None = None,
                 campaign_job: bool | None = None) -> None:
        from distillguard.policy.engine import PolicyEngine
        from distillguard.telemetry.store import open_store

        self.settings = settings
        self.store = open_store(settings)
        self.policy = PolicyEngine.from_settings(settings)
        self.checkpoints = CheckpointStore.from_settings(settings)
        self.link: Any = None
        self.runners: list[DetectionRunner] = []
        self.job: CampaignJob | None = None
        self._stop = threading.Event()
        embedder = _embedder(settings)
        warm = {"warmup_s": settings.detection_warmup_hours * 3600.0,
                "warmup_events": settings.detection_warmup_events}
        if settings.event_stream == "nats":
            from distillguard.detection.jetstream import JetStreamPartitionLog, NatsLink

            total = settings.detection_partitions
            mine = list(range(total)) if partitions is None else partitions
            bad = [p for p in mine if not 0 <= p < total]
            if bad:
                raise ValueError(f"--partitions: {bad} outside 0..{total - 1} "
                                 f"(detection_partitions = {total})")
            self.link = NatsLink(settings.nats_url.reveal(), name="distillguard-detect")
            for p in mine:
                self.runners.append(DetectionRunner(
                    _pipeline(settings, self.store, embedder),
                    JetStreamPartitionLog(self.link, settings, p),
                    checkpoints=self.checkpoints, name=partition_name(p),
                    labels=(("partition", str(p)),), **warm))
            if campaign_job if campaign_job is not None else 0 in mine:
                self.job = CampaignJob(_pipeline(settings, self.store, None),
                                       self.checkpoints, total, self.policy)
        else:
            from distillguard.detection.log import StoreLog

            self.runners.append(DetectionRunner(
                _pipeline(settings, self.store, embedder), StoreLog(self.store),
                policy=self.policy, checkpoints=self.checkpoints, name="service", **warm))

    def metrics_text(self) -> bytes:
        """Prometheus text of this worker's runners (what ``--metrics-port`` serves)."""
        return ("\n".join(metrics_lines(self.runners)) + "\n").encode()

    def stop(self) -> None:
        """Ask the loop to finish (a last checkpoint is taken)."""
        self._stop.set()

    def run(self, duration: float | None = None) -> None:
        """Read, checkpoint and run rounds until ``stop`` (or ``duration`` seconds)."""
        for r in self.runners:
            print(r.resume(), flush=True)
        interval = self.settings.detection_interval
        # Partition state is what the campaign job reads: checkpoint it every round.
        checkpoint_every = (interval if self.job is not None or self.link is not None
                            else self.settings.detection_checkpoint_interval)
        end = None if duration is None else time.monotonic() + duration
        next_round = next_checkpoint = time.monotonic() + interval
        next_report = time.monotonic() + 30.0
        try:
            while not self._stop.is_set() and (end is None or time.monotonic() < end):
                read = sum(r.catch_up(interval) for r in self.runners)
                now = time.monotonic()
                if now >= next_checkpoint:
                    for r in self.runners:
                        r.checkpoint()
                    next_checkpoint = now + checkpoint_every
                if now >= next_round:
                    if self.job is not None:
                        self.job.round()
                    elif self.link is None:
                        self.runners[0].round()
                    next_round = time.monotonic() + interval
                if now >= next_report:
                    next_report = now + 30.0
                    log.info("detect: %s", "; ".join(
                        f"{r.name} at {r.position}, backlog {r.backlog()}, lag "
                        f"{r.lag_seconds():.1f} s" for r in self.runners))
                if not read and self.link is None:
                    self._stop.wait(0.1)  # JetStream's fetch already waited
        finally:
            self.close()

    def close(self) -> None:
        """Last checkpoints, then release everything."""
        for r in self.runners:
            try:
                r.checkpoint()
            except Exception:  # noqa: BLE001 - still release the rest
                log.exception("last checkpoint of %s failed", r.name)
        self.checkpoints.close()
        if self.link is not None:
            self.link.close()
        self.policy.close()
        self.store.close()


class MetricsServer:
    """``GET /metrics`` on its own thread: what ``render`` returns, as Prometheus text."""

    def __init__(self, host: str, port: int, render: Callable[[], bytes]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                if self.path.partition("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = render()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # a scrape every few seconds is no news

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _cmd_detect(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    partitions = None
    if args.partitions:
        partitions = [int(p) for p in args.partitions.split(",") if p.strip()]
    if args.metrics_host is not None and args.metrics_port is None:
        print("distillguard: --metrics-host needs --metrics-port", file=sys.stderr)
        return 2
    worker = Worker(settings, partitions=partitions, campaign_job=args.campaign_job)
    server = None
    if args.metrics_port is not None:
        host = args.metrics_host or "127.0.0.1"
        try:
            server = MetricsServer(host, args.metrics_port, worker.metrics_text)
        except OSError as exc:
            worker.close()
            print(f"distillguard: --metrics-port: cannot listen on "
                  f"{host}:{args.metrics_port} ({exc.strerror or exc})",
                  file=sys.stderr)
            return 2
        host, port = server.address
        print(f"detect: metrics on http://{host}:{port}/metrics", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    try:
        worker.run(duration=args.duration)
    finally:
        if server is not None:
            server.close()
    return 0


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not between 0 and 65535")
    return port


def add_commands(sub: Any) -> None:
    """The ``detect`` command."""
    p = sub.add_parser("detect", help="run detection as its own service (gateways with "
                       "detection_mode = external feed it)")
    p.add_argument("--partitions", help="comma-separated partitions of the event stream "
                   "this worker reads (event_stream = nats; default: all)")
    p.add_argument("--campaign-job", action=argparse.BooleanOptionalAction, default=None,
                   help="run the cross-account job and the rules here (default: in the "
                   "worker that reads partition 0)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--metrics-port", type=_port, help="serve GET /metrics (the detection "
                   "series of an in-process gateway, per partition) on this port (0: any "
                   "free one; default: none)")
    p.add_argument("--metrics-host", help="address the metrics port listens on "
                   "(default 127.0.0.1)")
    p.set_defaults(func=_cmd_detect)
