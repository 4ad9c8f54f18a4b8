"""Floods against a running gateway (``distillguard serve`` in a subprocess), with figures.

Each flood prints what an established account notices (time to first byte, p50/p99/max),
what was shed (429 / 503 / closed, as clients saw it and as the server's ``/metrics``
counts it), the server's memory (peak RSS), and tokens generated for nobody; at the end
one table gives every flood's figures, sign-ups accepted per minute included. The server
runs with the settings of this checkout; run the same script against an older checkout to
compare.

    nice -n 10 python bench/flood.py                      # all floods, small sizes, tiny model
    python bench/flood.py --flood local --streams 200 --accounts 20 --model embedded
    python bench/flood.py --flood slow --slow-connections 1100 --ulimit 1024
    python bench/flood.py --flood amplify --keyless 20000

Floods:
- ``local``: ``--streams`` concurrent streams of ``--max-tokens`` from ``--accounts`` new
  accounts (sent by a second process, one connection pool per account), while this
  process, as an established account (key 30 days old), sends a 4-token request every
  ``--probe-every`` seconds; ``--repeat`` runs it again on fresh servers.
- ``slow``: ``--slow-connections`` connections from 127.0.0.2 that send a partial request
  head and then nothing, against a server at ``ulimit -n --ulimit``; ``/healthz`` and an
  established account's chat request are timed from 127.0.0.1 meanwhile.
- ``abandon``: ``--abandon`` non-stream requests whose clients leave after 1.5 s; tokens
  generated for them (the server's own count) are tokens for nobody.
- ``budget``: streams closed just before their end, with ``rate_limit_tpm`` set: tokens
  charged against tokens received.
- ``amplify``: ``--keyless`` keyless ``GET /v1/<random>`` (metrics size, series, render
  time) and 50 requests with a 30 KB and a 1 MB User-Agent (events.db growth).
- ``signup``: ``bench/signup.py`` (``--sybils`` sign-ups in 10 min from 4 /24 networks
  and one fingerprint, against honest sign-ups at 30/h) in its own process; it runs the
  app in process on a simulated clock, so it gives keys per minute, outcomes and memory,
  not a served TTFB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

PY = sys.executable
ESTABLISHED_AGE = 30 * 86400


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def env_for(data: Path, args: argparse.Namespace, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    env.update({
        "DISTILLGUARD_DATA_DIR": str(data), "DISTILLGUARD_LOG_LEVEL": "warning",
        "DISTILLGUARD_DETECTION": "false", "DISTILLGUARD_BACKEND": "local",
        "DISTILLGUARD_LOCAL_THREADS": str(args.threads),
        "DISTILLGUARD_LOCAL_MAX_BATCH": str(args.max_batch),
    })
    if args.model_path:
        env["DISTILLGUARD_LOCAL_MODEL_PATH"] = args.model_path
        env["DISTILLGUARD_MODEL_NAME"] = "bench"
    env.update(extra)
    return env


def make_keys(env: dict[str, str], accounts: list[str], established: list[str]) -> dict:
    """Keys by account, made with the CLI; established ones backdated 30 days."""
    keys = {}
    for account in accounts + established:
        out = subprocess.run([PY, "-m", "distillguard.cli", "keys", "create", "--account", account],
                             env=env, capture_output=True, text=True, check=True).stdout
        keys[account] = re.search(r"sk-[A-Za-z0-9_\-]+", out).group(0)
    db = None
    for path in Path(env["DISTILLGUARD_DATA_DIR"]).glob("*.db"):
        with contextlib.closing(sqlite3.connect(path)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if "api_keys" in tables:
                for account in established:
                    conn.execute("UPDATE api_keys SET created_at = created_at - ? "
                                 "WHERE account = ?", (ESTABLISHED_AGE, account))
                conn.commit()
                db = path
    assert db is not None or not keys
    return keys


@contextlib.contextmanager
def server(env: dict[str, str], *, nofile: int | None = None) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {**env, "DISTILLGUARD_PORT": str(port)}

    def limits() -> None:
        os.nice(0)
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen([PY, "-m", "distillguard.cli", "serve"], env=env,
                            preexec_fn=limits, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def completion_tokens(url: str) -> int:
    page = httpx.get(url + "/metrics", timeout=30).text
    found = re.search(r'distillguard_tokens_total\{type="completion"\} (\d+)', page)
    return int(found.group(1)) if found else 0


def server_counts(url: str) -> dict[str, float]:
    """The unlabelled series on the server's /metrics (guard and queue counters)."""
    page = httpx.get(url + "/metrics", timeout=30).text
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^(distillguard_[a-z_]+) (\S+)$", page, re.M)}


def ttfb_cell(values: list[float], asked: int) -> str:
    if not values:
        return f"0/{asked} served"
    return (f"{pct(values, .5):.2f} / {pct(values, .99):.2f} / {max(values):.2f} s "
            f"({len(values)}/{asked})")


def answered(url: str) -> int:
    page = httpx.get(url + "/metrics", timeout=30).text
    return sum(int(n) for n in re.findall(
        r'distillguard_requests_total\{endpoint="/v1/chat/completions",status="\d+"\} (\d+)',
        page))


async def stream_once(client: httpx.AsyncClient, url: str, key: str, model: str,
                      max_tokens: int, text: str) -> tuple[str, float | None, int]:
    """(outcome, ttfb seconds, chunks received)."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}]}
    started = time.perf_counter()
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as r:
            if r.status_code != 200:
                await r.aread()
                return f"http {r.status_code}", None, 0
            ttfb, chunks = None, 0
            async for line in r.aiter_lines():
                if line.startswith("data: {") and '"content":"' in line:
                    if ttfb is None:
                        ttfb = time.perf_counter() - started
                    chunks += 1
            return "ok", ttfb, chunks
    except httpx.HTTPError as exc:
        return f"error {type(exc).__name__}", None, 0


def model_name(args: argparse.Namespace) -> str:
    return "bench" if args.model_path else "smollm2-135m-instruct"


# -- floods ---------------------------------------------------------------------------

def flood_streams(url: str, keys: list[str], model: str, max_tokens: int,
                  streams: int) -> list[tuple[str, float | None, int]]:
    """The flood's streams, all started at once; runs in its own process (below)."""

    async def go() -> list[tuple[str, float | None, int]]:
        # One connection pool per flood account: httpcore scans every connection of a
        # pool whenever a request starts or ends, so one pool of 200 made this client
        # stall for seconds when the 503s came back.
        clients = {key: httpx.AsyncClient(timeout=600, limits=httpx.Limits(
            max_connections=streams)) for key in keys}
        try:
            return list(await asyncio.gather(*(stream_once(
                clients[keys[i % len(keys)]], url, keys[i % len(keys)], model, max_tokens,
                f"Tell me a long story number {i}.") for i in range(streams))))
        finally:
            for client in clients.values():
                await client.aclose()

    return asyncio.run(go())


async def flood_local(args: argparse.Namespace, work: Path) -> dict[str, str]:
    runs = [await flood_local_once(args, work / f"local{i}") for i in range(args.repeat)]
    probe_t = [t for run in runs for t in run["probe_t"]]
    asked = sum(run["probes"] for run in runs)
    spread = ", ".join(f"{max(run['probe_t'], default=float('nan')):.2f}" for run in runs)
    if len(runs) > 1:
        print(f"\n[local] {len(runs)} runs: established TTFB p50 {pct(probe_t, .5):.2f} s "
              f"p99 {pct(probe_t, .99):.2f} s max {max(probe_t, default=float('nan')):.2f} s; "
              f"max per run {spread}; p50 per run "
              + ", ".join(f"{pct(run['probe_t'], .5):.2f}" for run in runs))
    last = runs[-1]
    return {"flood": "local", "load": f"{args.streams} streams x {args.max_tokens} tokens, "
            f"{args.accounts} new accounts" + (f", {len(runs)} runs" if len(runs) > 1 else ""),
            "established": ttfb_cell(probe_t, asked),
            "shed": ", ".join(f"{k} {v}" for k, v in last["shed"].items())
            + f" of {args.streams}" + (" (last run)" if len(runs) > 1 else ""),
            "rss": f"{max(run['rss'] for run in runs):.0f}",
            "other": f"flood TTFB p50 {last['flood_p50']:.2f} s"
            + (f"; max per run {spread}" if len(runs) > 1 else "")}


async def flood_local_once(args: argparse.Namespace, work: Path) -> dict:
    env = env_for(work, args)
    accounts = [f"flood{i}" for i in range(args.accounts)]
    keys = make_keys(env, accounts, ["customer"])
    model = model_name(args)
    loop = asyncio.get_running_loop()
    with server(env) as (url, pid), \
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        before = completion_tokens(url)
        # The flood comes from another process, as it would from other machines: this
        # process only measures the established account, so that the flood's own client
        # work (hundreds of streams) cannot delay the measurement.
        flood = loop.run_in_executor(pool, flood_streams, url, [keys[a] for a in accounts],
                                     model, args.max_tokens, args.streams)
        deadline = time.monotonic() + 120
        while not flood.done() and time.monotonic() < deadline:
            counts = server_counts(url)
            if counts.get("distillguard_local_queue_waiting", 0) \
                    or counts.get("distillguard_local_batch_rows", 0):
                break  # the flood has reached the model
            await asyncio.sleep(0.1)
        probes: list[tuple[str, float | None, int]] = []
        peak = 0.0
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(timeout=600) as client:
            while not flood.done():
                probes.append(await stream_once(client, url, keys["customer"], model, 4,
                                                "Say hi."))
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(args.probe_every)
        results = await flood
        generated = completion_tokens(url) - before
        counts = server_counts(url)
    served = [t for o, t, _ in results if o == "ok" and t is not None]
    probe_t = [t for o, t, _ in probes if o == "ok" and t is not None]
    outcomes: dict[str, int] = {}
    for o, _, _ in results:
        outcomes[o] = outcomes.get(o, 0) + 1
    received = sum(c for _, _, c in results) + sum(c for _, _, c in probes)
    print(f"\n[local] {args.streams} streams x max_tokens {args.max_tokens} from "
          f"{args.accounts} new accounts; model {model} ({args.model_path or 'embedded'}), "
          f"max_batch {args.max_batch}")
    print(f"  established account, 4-token request: {len(probe_t)}/{len(probes)} served, "
          f"TTFB p50 {pct(probe_t, .5):.2f} s p99 {pct(probe_t, .99):.2f} s "
          f"max {max(probe_t, default=float('nan')):.2f} s")
    print(f"  flood streams served: TTFB p50 {pct(served, .5):.2f} s p99 "
          f"{pct(served, .99):.2f} s; outcomes {outcomes}")
    print(f"  server RSS peak {peak:.0f} MB; tokens generated {generated}, "
          f"content chunks received {received}")
    shed_429 = int(counts.get("distillguard_local_shed_account_total", 0))
    shed_503 = int(counts.get("distillguard_local_shed_overloaded_total", 0))
    print(f"  server's queue shed: {shed_429} with 429 (account's share), {shed_503} with 503 "
          "(queue full)")
    return {"probe_t": probe_t, "probes": len(probes), "rss": peak,
            "shed": {"429": shed_429, "503": shed_503}, "flood_p50": pct(served, .5)}


async def flood_slow(args: argparse.Namespace, work: Path) -> dict[str, str]:
    env = env_for(work / "slow", args)
    keys = make_keys(env, [], ["customer"])
    model = model_name(args)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.slow_connections + 200
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    with server(env, nofile=args.ulimit) as (url, pid):
        port = int(url.rsplit(":", 1)[1])
        socks, refused = [], 0
        for _ in range(args.slow_connections):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2,
                                             source_address=("127.0.0.2", 0))
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                socks.append(s)
            except OSError:
                refused += 1
        health: list[float | None] = []
        chat: list[float | None] = []
        deadline = time.monotonic() + args.slow_seconds
        open_peak = 0.0
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    open_peak = max(open_peak, server_counts(url).get(
                        "distillguard_http_connections_open", 0))
                t = time.perf_counter()
                try:
                    r = await client.get(url + "/healthz")
                    health.append(time.perf_counter() - t if r.status_code == 200 else None)
                except httpx.HTTPError:
                    health.append(None)
                outcome, ttfb, _ = await stream_once(client, url, keys["customer"], model, 4,
                                                     "Say hi.")
                chat.append(ttfb if outcome == "ok" else None)
                await asyncio.sleep(0.5)
        peak = rss_mb(pid)
        counts = server_counts(url)
        closed = 0
        for s in socks:
            s.setblocking(False)
            try:
                if s.recv(1024) == b"":
                    closed += 1
                else:
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
            s.close()
    ok_h = [t for t in health if t is not None]
    ok_c = [t for t in chat if t is not None]
    print(f"\n[slow] {args.slow_connections} slow-header connections from 127.0.0.2, server "
          f"ulimit -n {args.ulimit}, {args.slow_seconds:.0f} s")
    print(f"  /healthz: {len(ok_h)}/{len(health)} answered, p50 {pct(ok_h, .5) * 1000:.0f} ms "
          f"max {max(ok_h, default=float('nan')) * 1000:.0f} ms")
    print(f"  established 4-token chat: {len(ok_c)}/{len(chat)} answered, TTFB p50 "
          f"{pct(ok_c, .5):.2f} s max {max(ok_c, default=float('nan')):.2f} s")
    print(f"  slow connections: {refused} refused at connect, {closed} of {len(socks)} closed "
          f"by the server by the end; server RSS {peak:.0f} MB")
    cut_cap = int(counts.get("distillguard_http_connections_refused_total", 0))
    cut_head = int(counts.get("distillguard_http_header_timeouts_total", 0))
    print(f"  server's /metrics: {cut_cap} refused over the per-address cap, {cut_head} header "
          f"timeouts, at most {open_peak:.0f} connections open")
    return {"flood": "slow", "load": f"{args.slow_connections} slow heads, ulimit -n "
            f"{args.ulimit}",
            "established": ttfb_cell(ok_c, len(chat)),
            "shed": f"cap {cut_cap}, head timeout {cut_head}, connect refused {refused}",
            "rss": f"{peak:.0f}",
            "other": f"/healthz {len(ok_h)}/{len(health)}, max "
                     f"{max(ok_h, default=float('nan')) * 1000:.0f} ms"}


async def flood_abandon(args: argparse.Namespace, work: Path) -> dict[str, str]:
    env = env_for(work / "abandon", args)
    accounts = [f"leaver{i}" for i in range(6)]
    keys = make_keys(env, accounts, [])
    model = model_name(args)
    with server(env) as (url, pid):
        before = completion_tokens(url)

        async def leave(i: int) -> None:
            body = {"model": model, "max_tokens": args.abandon_tokens,
                    "messages": [{"role": "user", "content": f"Write a long essay {i}."}]}
            async with httpx.AsyncClient(timeout=1.5) as client:
                with contextlib.suppress(httpx.HTTPError):
                    await client.post(url + "/v1/chat/completions", json=body,
                                      headers={"Authorization":
                                               f"Bearer {keys[accounts[i % 6]]}"})

        await asyncio.gather(*(leave(i) for i in range(args.abandon)))
        # Whatever is generated now is generated for nobody; a request's tokens reach
        # the metrics once the server is done with it, so wait for all of them.
        deadline = time.monotonic() + 300
        while answered(url) < args.abandon and time.monotonic() < deadline:
            await asyncio.sleep(1)
        generated = completion_tokens(url) - before
        peak = rss_mb(pid)
        statuses = dict(re.findall(
            r'distillguard_requests_total\{endpoint="/v1/chat/completions",status="(\d+)"\} '
            r"(\d+)", httpx.get(url + "/metrics", timeout=30).text))
    print(f"\n[abandon] {args.abandon} non-stream requests (max_tokens "
          f"{args.abandon_tokens}) whose clients left after 1.5 s")
    print(f"  tokens generated for nobody: {generated} (at most "
          f"{args.abandon * args.abandon_tokens} asked); server RSS {peak:.0f} MB")
    print(f"  server statuses: {statuses}")
    return {"flood": "abandon", "load": f"{args.abandon} x {args.abandon_tokens} tokens, "
            "clients leave at 1.5 s", "established": "-",
            "shed": f"499 {statuses.get('499', '0')}", "rss": f"{peak:.0f}",
            "other": f"{generated} tokens for nobody"}


async def flood_budget(args: argparse.Namespace, work: Path) -> dict[str, str]:
    tpm = 2000
    env = env_for(work / "budget", args, DISTILLGUARD_RATE_LIMIT_TPM=str(tpm))
    keys = make_keys(env, ["closer"], [])
    model = model_name(args)
    received, statuses = 0, {}
    with server(env) as (url, pid):
        async with httpx.AsyncClient(timeout=120) as client:
            for i in range(args.budget_requests):
                body = {"model": model, "stream": True, "max_tokens": 200,
                        "messages": [{"role": "user", "content": f"Story {i}, please."}]}
                async with client.stream("POST", url + "/v1/chat/completions", json=body,
                                         headers={"Authorization":
                                                  f"Bearer {keys['closer']}"}) as r:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code != 200:
                        await r.aread()
                        continue
                    chunks = 0
                    async for line in r.aiter_lines():
                        if '"content":"' in line:
                            chunks += 1
                        if chunks >= 150 or '"finish_reason":"' in line:
                            break  # close before the end (and its usage chunk)
                    received += chunks
        await asyncio.sleep(1)
        charged = completion_tokens(url)
        peak = rss_mb(pid)
    print(f"\n[budget] {args.budget_requests} streams of max_tokens 200 closed after 150 "
          "chunks, "
          f"rate_limit_tpm {tpm}")
    print(f"  statuses {statuses}; content chunks received {received}; completion tokens "
          f"charged {charged}")
    return {"flood": "budget", "load": f"{args.budget_requests} streams closed early, "
            f"tpm {tpm}", "established": "-", "shed": f"429 {statuses.get(429, 0)}",
            "rss": f"{peak:.0f}", "other": f"{received} chunks received, {charged} charged"}


async def flood_amplify(args: argparse.Namespace, work: Path) -> dict[str, str]:
    env = env_for(work / "amplify", args, DISTILLGUARD_BACKEND="echo")
    env.pop("DISTILLGUARD_LOCAL_MODEL_PATH", None)
    make_keys(env, [], [])
    data = Path(env["DISTILLGUARD_DATA_DIR"])

    def db_bytes() -> int:
        return sum(p.stat().st_size for p in data.glob("*.db*"))

    with server(env) as (url, pid):
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=30) as client:
            async def one(i: int) -> None:
                async with sem:
                    await client.get(f"{url}/v1/{os.urandom(6).hex()}{i}")
            await asyncio.gather(*(one(i) for i in range(args.keyless)))
            t = time.perf_counter()
            page = (await client.get(url + "/metrics")).content
            render = time.perf_counter() - t
            series = sum(1 for line in page.splitlines() if line and not line.startswith(b"#"))
            rows = []
            for size in (30_000, 1_000_000):
                await asyncio.sleep(1)
                start = db_bytes()
                codes: dict[str, int] = {}
                for _ in range(50):
                    try:
                        r = await client.post(url + "/v1/chat/completions", json={},
                                              headers={"User-Agent": "A" * size})
                        codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
                    except httpx.HTTPError as exc:
                        codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(1.5)
                rows.append((size, codes, db_bytes() - start))
        peak = rss_mb(pid)
    print(f"\n[amplify] {args.keyless} keyless GET /v1/<random>: /metrics {len(page) / 1e3:.1f} "
          f"kB, {series} series, render {render * 1000:.1f} ms; server RSS {peak:.0f} MB")
    for size, codes, grown in rows:
        print(f"  50 requests with a {size / 1000:.0f} kB User-Agent: {codes}; "
              f"events.db grew {grown / 1e6:.2f} MB")
    return {"flood": "amplify", "load": f"{args.keyless} keyless paths, 50 x 1 MB UA",
            "established": "-", "shed": "-", "rss": f"{peak:.0f}",
            "other": f"/metrics {series} series; events.db +{rows[-1][2] / 1e6:.2f} MB"}


async def flood_signup(args: argparse.Namespace, work: Path) -> dict[str, str]:
    # bench/signup.py, in its own process so that the memory is the sign-up app's.
    cmd = [PY, str(Path(__file__).with_name("signup.py")), "--json",
           "--sybils", str(args.sybils)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(f"\n[signup] {args.sybils} sybil sign-ups in 10 min from 4 /24s, one fingerprint; "
          "honest 30/h (bench/signup.py, in process, simulated clock)")
    print(f"  sybil keys per minute in the burst {r['sybil_accepted_per_min_in_burst']:.2f} "
          f"({r['sybil_accepted_total']} in all); honest {r['honest_accepted_per_min']:.2f} "
          f"of {r['honest_offered_per_min']:.2f} offered per minute")
    print(f"  sybil outcomes {r['sybil_outcomes']}; honest {r['honest_outcomes']}; breaker "
          f"tripped {r['breaker_tripped']}; peak RSS {r['rss_peak_mb']:.0f} MB")
    refused = sum(n for k, n in r["sybil_outcomes"].items() if k != "accepted")
    return {"flood": "signup", "load": f"{args.sybils} sybils / 10 min vs honest 30/h",
            "established": "- (in process)",
            "shed": f"sybils not given a key {refused} of {args.sybils}",
            "rss": f"{r['rss_peak_mb']:.0f}",
            "other": f"keys/min sybil {r['sybil_accepted_per_min_in_burst']:.2f}, honest "
                     f"{r['honest_accepted_per_min']:.2f} of "
                     f"{r['honest_offered_per_min']:.2f}"}


FLOODS = {"local": flood_local, "slow": flood_slow, "abandon": flood_abandon,
          "budget": flood_budget, "amplify": flood_amplify, "signup": flood_signup}
COLUMNS = [("flood", "flood"), ("load", "load"),
           ("established", "established TTFB p50 / p99 / max"), ("shed", "shed"),
           ("rss", "RSS MB"), ("other", "other")]


def table(rows: list[dict[str, str]]) -> str:
    cells = [[title for _, title in COLUMNS]] + [[row[k] for k, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", default="all",
                        help=f"all, or some of {', '.join(FLOODS)} separated by commas")
    parser.add_argument("--model", choices=["tiny", "embedded"], default="tiny",
                        help="tiny: a 2-layer random-weight model with the real tokenizer "
                        "(CPU default); embedded: SmolLM2-135M")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--probe-every", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the local flood this many times (each on a fresh server)")
    parser.add_argument("--slow-connections", type=int, default=1100)
    parser.add_argument("--ulimit", type=int, default=1024)
    parser.add_argument("--slow-seconds", type=float, default=15.0)
    parser.add_argument("--abandon", type=int, default=48)
    parser.add_argument("--abandon-tokens", type=int, default=1024)
    parser.add_argument("--budget-requests", type=int, default=20)
    parser.add_argument("--keyless", type=int, default=2000)
    parser.add_argument("--sybils", type=int, default=1000)
    args = parser.parse_args()
    unknown = set(args.flood.split(",")) - set(FLOODS) - {"all"}
    if unknown:
        parser.error(f"unknown flood {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(FLOODS)}")
    with tempfile.TemporaryDirectory(prefix="dg-flood-") as tmp:
        work = Path(tmp)
        args.model_path = ""
        if args.model == "tiny":
            from distillguard.backends.tiny import create_tiny_model

            args.model_path = str(create_tiny_model(work / "tiny"))
        rows = [asyncio.run(FLOODS[name](args, work))
                for name in (FLOODS if args.flood == "all" else args.flood.split(","))]
    print(f"\nmodel {args.model}, max_batch {args.max_batch}, {args.threads} torch thread(s)")
    print(table(rows))


if __name__ == "__main__":
    main()
