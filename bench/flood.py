"""Floods against a running gateway (``distillguard serve`` in a subprocess), with figures.

Each flood prints what an established account notices (time to first byte, p50/p99/max),
what was shed (429 / 503 / closed), the server's memory (RSS), and tokens generated for
nobody. The server runs with the settings of this checkout; run the same script against
an older checkout to compare.

    nice -n 10 python bench/flood.py                      # all floods, small sizes, tiny model
    python bench/flood.py --flood local --streams 200 --accounts 20 --model embedded
    python bench/flood.py --flood slow --slow-connections 1100 --ulimit 1024
    python bench/flood.py --flood amplify --keyless 20000

Floods:
- ``local``: ``--streams`` concurrent streams of ``--max-tokens`` from ``--accounts`` new
  accounts, while an established account (key 30 days old) sends a 4-token request every
  ``--probe-every`` seconds.
- ``slow``: ``--slow-connections`` connections from 127.0.0.2 that send a partial request
  head and then nothing, against a server at ``ulimit -n --ulimit``; ``/healthz`` and an
  established account's chat request are timed from 127.0.0.1 meanwhile.
- ``abandon``: ``--abandon`` non-stream requests whose clients leave after 1.5 s; tokens
  generated for them (the server's own count) are tokens for nobody.
- ``budget``: streams closed just before their end, with ``rate_limit_tpm`` set: tokens
  charged against tokens received.
- ``amplify``: ``--keyless`` keyless ``GET /v1/<random>`` (metrics size, series, render
  time) and 50 requests with a 30 KB and a 1 MB User-Agent (events.db growth).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

async def flood_local(args: argparse.Namespace, work: Path) -> None:
    env = env_for(work / "local", args)
    accounts = [f"flood{i}" for i in range(args.accounts)]
    keys = make_keys(env, accounts, ["customer"])
    model = model_name(args)
    with server(env) as (url, pid):
        before = completion_tokens(url)
        limits = httpx.Limits(max_connections=args.streams + 50)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            flood = [asyncio.ensure_future(stream_once(
                client, url, keys[accounts[i % len(accounts)]], model, args.max_tokens,
                f"Tell me a long story number {i}.")) for i in range(args.streams)]
            probes: list[tuple[str, float | None, int]] = []
            peak = 0.0
            await asyncio.sleep(1.0)
            while not all(f.done() for f in flood):
                probes.append(await stream_once(client, url, keys["customer"], model, 4,
                                                "Say hi."))
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(args.probe_every)
            results = [f.result() for f in flood]
        generated = completion_tokens(url) - before
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


async def flood_slow(args: argparse.Namespace, work: Path) -> None:
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
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
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


async def flood_abandon(args: argparse.Namespace, work: Path) -> None:
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
    print(f"\n[abandon] {args.abandon} non-stream requests (max_tokens "
          f"{args.abandon_tokens}) whose clients left after 1.5 s")
    print(f"  tokens generated for nobody: {generated} (at most "
          f"{args.abandon * args.abandon_tokens} asked); server RSS {peak:.0f} MB")


async def flood_budget(args: argparse.Namespace, work: Path) -> None:
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
    print(f"\n[budget] {args.budget_requests} streams of max_tokens 200 closed after 150 "
          "chunks, "
          f"rate_limit_tpm {tpm}")
    print(f"  statuses {statuses}; content chunks received {received}; completion tokens "
          f"charged {charged}")


async def flood_amplify(args: argparse.Namespace, work: Path) -> None:
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


FLOODS = {"local": flood_local, "slow": flood_slow, "abandon": flood_abandon,
          "budget": flood_budget, "amplify": flood_amplify}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", choices=[*FLOODS, "all"], default="all")
    parser.add_argument("--model", choices=["tiny", "embedded"], default="tiny",
                        help="tiny: a 2-layer random-weight model with the real tokenizer "
                        "(CPU default); embedded: SmolLM2-135M")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--probe-every", type=float, default=0.5)
    parser.add_argument("--slow-connections", type=int, default=1100)
    parser.add_argument("--ulimit", type=int, default=1024)
    parser.add_argument("--slow-seconds", type=float, default=15.0)
    parser.add_argument("--abandon", type=int, default=48)
    parser.add_argument("--abandon-tokens", type=int, default=1024)
    parser.add_argument("--budget-requests", type=int, default=20)
    parser.add_argument("--keyless", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dg-flood-") as tmp:
        work = Path(tmp)
        args.model_path = ""
        if args.model == "tiny":
            from distillguard.backends.tiny import create_tiny_model

            args.model_path = str(create_tiny_model(work / "tiny"))
        for name in (FLOODS if args.flood == "all" else [args.flood]):
            asyncio.run(FLOODS[name](args, work))


if __name__ == "__main__":
    main()
