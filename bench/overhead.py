"""Gateway overhead against an instant fake OpenAI upstream.

Starts, each in its own process: the fake upstream (``distillguard.testing.fake_upstream``),
the real gateway (``distillguard serve --backend upstream``, uvicorn with uvloop and
httptools, event logging to SQLite on), and, when it is installed in a separate venv,
the LiteLLM proxy (no database) against the same upstream. Then, interleaving the paths
round by round:

* latency at 1 client (this process, one kept-alive aiohttp connection, sequential
  requests; the time to the last byte), plain and streaming; "added" = the path's
  median (p95) minus the direct path's median (p95);
* requests per second at ``--concurrency`` clients for ``--duration`` seconds, with
  ``wrk`` when it is installed (it costs far less CPU than a Python client), else with
  aiohttp in this process; and the CPU seconds the proxy process spent per request.

Prints one table, then checks that the gateway stored one event per request it answered.

    .venv/bin/python bench/overhead.py                       # ~2 minutes on 2 cores
    .venv/bin/python bench/overhead.py --rounds 5 --duration 10 --requests 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from distillguard.config import Settings
from distillguard.telemetry.store import open_store
from distillguard.testing.fake_upstream import FakeUpstreamProcess

MODEL = "fake-model"
# 16 words: a short answer, and 16 stream events plus the framing ones.
REPLY = ("the quick brown fox jumps over the lazy dog while five boxing wizards jump "
         "quickly today")
LITELLM_KEY = "sk-bench-litellm"


@dataclass
class Target:
    name: str
    base_url: str
    key: str
    pid: int | None = None
    latency: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})
    rps: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})
    cpu_ms: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})
    errors: int = 0
    answered: int = 0


def body(stream: bool) -> bytes:
    payload: dict = {"model": MODEL, "max_tokens": 32,
                     "messages": [{"role": "user", "content": "Say something short."}]}
    if stream:
        payload["stream"] = True
    return orjson.dumps(payload)


def headers(key: str) -> dict[str, str]:
    out = {"Content-Type": "application/json"}
    if key:
        out["Authorization"] = f"Bearer {key}"
    return out


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process (Linux /proc)."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- load ----------------------------------------------------------------------------


async def measure_latency(target: Target, stream: bool, n: int, warmup: int) -> list[float]:
    url = target.base_url + "/chat/completions"
    data, hdrs = body(stream), headers(target.key)
    times: list[float] = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(warmup + n):
            start = time.perf_counter()
            async with session.post(url, data=data, headers=hdrs) as resp:
                raw = await resp.read()
                ok = resp.status == 200 and (not stream or raw.rstrip().endswith(b"[DONE]"))
            elapsed = time.perf_counter() - start
            target.answered += 1
            if not ok:
                target.errors += 1
            elif i >= warmup:
                times.append(elapsed * 1000)
    return times


async def load_aiohttp(target: Target, stream: bool, concurrency: int,
                       duration: float) -> tuple[int, int]:
    url = target.base_url + "/chat/completions"
    data, hdrs = body(stream), headers(target.key)
    done = errors = 0
    deadline = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                try:
                    async with session.post(url, data=data, headers=hdrs) as resp:
                        await resp.read()
                        errors += resp.status != 200
                except aiohttp.ClientError:
                    errors += 1
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors


def load_wrk(wrk: str, target: Target, stream: bool, concurrency: int, duration: float,
             workdir: Path) -> tuple[int, int, float]:
    script = workdir / f"wrk-{target.name}-{int(stream)}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = [[{body(stream).decode()}]]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers(target.key).items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{duration:g}s", "-s",
                          str(script), target.base_url + "/chat/completions"],
                         capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(g) for g in m.groups())
    return total, errors, rps


def measure_throughput(target: Target, stream: bool, args: argparse.Namespace,
                       workdir: Path) -> None:
    before = cpu_seconds(target.pid)
    if args.wrk:
        total, errors, rps = load_wrk(args.wrk, target, stream, args.concurrency,
                                      args.duration, workdir)
    else:
        start = time.perf_counter()
        total, errors = asyncio.run(load_aiohttp(target, stream, args.concurrency,
                                                 args.duration))
        rps = total / (time.perf_counter() - start)
    used = cpu_seconds(target.pid) - before
    target.answered += total
    target.errors += errors
    target.rps[stream].append(rps)
    if total:
        target.cpu_ms[stream].append(used / total * 1000)


# --- processes -----------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float,
               key: str = "") -> None:
    async def poll() -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{what} exited with status {proc.returncode}")
                try:
                    async with session.get(url, headers=headers(key)) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not answer {url} within {timeout:g} s")
                await asyncio.sleep(0.2)

    asyncio.run(poll())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_gateway(upstream_url: str, data_dir: Path) -> tuple[subprocess.Popen, str, str]:
    settings = Settings.load(env={}, data_dir=str(data_dir))
    store = open_store(settings)
    _, key = store.create_key("bench")
    store.close()
    port = free_port()
    env = clean_env() | {"DISTILLGUARD_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillguard.cli", "--data-dir", str(data_dir), "serve",
         "--backend", "upstream", "--upstream-url", upstream_url, "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    wait_ready(url + "/models", proc, "gateway", 60, key)
    return proc, url, key


def start_litellm(venv: Path, upstream_url: str,
                  workdir: Path) -> tuple[subprocess.Popen | None, str, str]:
    """LiteLLM proxy without a database; returns (None, reason, "") when unavailable."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        return None, f"not installed ({exe} missing)", ""
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream_url}\n"
        "      api_key: sk-upstream\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n")
    port = free_port()
    env = clean_env() | {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    log = open(workdir / "litellm.log", "wb")  # noqa: SIM115 - lives as long as the proxy
    proc = subprocess.Popen([str(exe), "--config", str(config), "--host", "127.0.0.1",
                             "--port", str(port), "--num_workers", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/liveliness", proc, "litellm", 180)
    except RuntimeError as exc:
        stop(proc)
        tail = (workdir / "litellm.log").read_text(errors="replace")[-400:]
        return None, f"did not start ({exc}): {tail}", ""
    return proc, url, LITELLM_KEY


# --- report --------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def report(targets: list[Target], args: argparse.Namespace) -> None:
    direct = targets[0]
    loader = "wrk -t1" if args.wrk else "aiohttp (this process)"
    print(f"\nGateway overhead against an instant fake upstream ({args.rounds} rounds "
          f"interleaved; {args.requests} sequential requests per path, mode and round; "
          f"{args.concurrency} clients for {args.duration:g} s with {loader}; reply of "
          f"{len(REPLY.split())} words)\n")
    print("| path | mode | median ms | p95 ms | added median ms | added p95 ms "
          f"| req/s at {args.concurrency} clients | proxy CPU ms/request | vs direct req/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stream in (False, True):
        base_med = pct(direct.latency[stream], 0.5)
        base_p95 = pct(direct.latency[stream], 0.95)
        base_rps = statistics.median(direct.rps[stream]) if direct.rps[stream] else 0.0
        for t in targets:
            lat = t.latency[stream]
            med, p95 = pct(lat, 0.5), pct(lat, 0.95)
            rps = statistics.median(t.rps[stream]) if t.rps[stream] else float("nan")
            cpu = statistics.median(t.cpu_ms[stream]) if t.cpu_ms[stream] else float("nan")
            added = "—" if t is direct else f"{med - base_med:.2f}"
            added95 = "—" if t is direct else f"{p95 - base_p95:.2f}"
            ratio = f"{rps / base_rps:.2f}" if base_rps else "nan"
            mode = "stream" if stream else "plain"
            print(f"| {t.name} | {mode} | {med:.2f} | {p95:.2f} | {added} | {added95} "
                  f"| {rps:,.0f} | {cpu:.2f} | {ratio} |")
    gateway = next(t for t in targets if t.name == "distillguard")
    for t in targets[2:]:
        for stream in (False, True):
            if t.rps[stream] and gateway.rps[stream]:
                ratio = statistics.median(gateway.rps[stream]) / statistics.median(t.rps[stream])
                extra = ((pct(t.latency[stream], 0.5) - base_med)
                         / max(pct(gateway.latency[stream], 0.5) - base_med, 1e-9))
                print(f"\ndistillguard vs {t.name} ({'stream' if stream else 'plain'}): "
                      f"{ratio:.1f}x the requests/s, {extra:.1f}x less added median latency")
    print()
    for t in targets:
        print(f"{t.name}: {t.answered} requests, {t.errors} errors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200,
                        help="sequential requests per path, mode and round (latency)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0,
                        help="seconds per throughput run")
    parser.add_argument("--litellm-venv", type=Path, default=Path("/tmp/litellm-venv"),
                        help="venv holding litellm[proxy] (never the project's venv)")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-wrk", action="store_true", help="load with aiohttp even if "
                        "wrk is installed")
    args = parser.parse_args(argv)
    args.wrk = None if args.no_wrk else shutil.which("wrk")

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="dg-overhead-") as tmp, \
            FakeUpstreamProcess("--reply", REPLY, "--models", MODEL) as upstream:
        workdir = Path(tmp)
        try:
            assert upstream.proc is not None
            targets = [Target("direct", upstream.url, "", pid=upstream.proc.pid)]
            print("starting the gateway...", file=sys.stderr)
            gw_proc, gw_url, gw_key = start_gateway(upstream.url, workdir / "data")
            procs.append(gw_proc)
            targets.append(Target("distillguard", gw_url, gw_key, pid=gw_proc.pid))
            if args.no_litellm:
                print("litellm: skipped (--no-litellm)")
            else:
                print("starting litellm...", file=sys.stderr)
                ll_proc, ll_url, ll_key = start_litellm(args.litellm_venv, upstream.url,
                                                        workdir)
                if ll_proc is None:
                    print(f"litellm: could not be run: {ll_url}")
                else:
                    procs.append(ll_proc)
                    targets.append(Target("litellm", ll_url, ll_key, pid=ll_proc.pid))
            for rnd in range(args.rounds):
                print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr)
                for stream in (False, True):
                    for t in targets:
                        t.latency[stream] += asyncio.run(
                            measure_latency(t, stream, args.requests, args.warmup))
                    for t in targets:
                        measure_throughput(t, stream, args, workdir)
            report(targets, args)
        finally:
            for proc in procs:
                stop(proc)
        gateway = targets[1]
        store = open_store(Settings.load(env={}, data_dir=str(workdir / "data")))
        stored = store.count_events()
        store.close()
        # At least one per request counted: wrk does not count the requests still in
        # flight when it stops, and the readiness probe is an API request too.
        print(f"events stored by the gateway: {stored} (requests counted by the clients: "
              f"{gateway.answered})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
