"""Sybil burst against honest sign-ups: keys issued per minute to each.

    .venv/bin/python bench/signup.py                       # 1,000 sybils, defaults
    .venv/bin/python bench/signup.py --sybils 5000 --honest-rate 120

The real gateway app (in process, through its ASGI routes) runs in ``verify`` mode with
the default screening settings, on a simulated clock: first ``--warmup-hours`` of honest
sign-ups at ``--honest-rate`` per hour teach the circuit breaker the usual rate; then, in
a measured hour, ``--sybils`` sign-ups arrive within ``--burst-minutes`` from
``--prefixes`` /24 networks with one client fingerprint (gmail dot/plus variants of a few
names and addresses at three catch-all domains), while honest sign-ups go on (each from
its own network, one of five browser fingerprints). An admin reopens the breaker
``--reopen-after`` minutes into the hour (0: never). Everyone opens their emailed link at
once. "Accepted" means the link showed a key; "waitlisted" means it queued the address.

Every attempt solves a real ALTCHA puzzle at the level the server asked, at
``--pow-cost`` (cheap, so the bench is quick); the figures also give the CPU the
sybils' puzzles would cost at the default ``signup_pow_cost``, from a measured PBKDF2 rate.
``bench/flood.py`` runs ``bench/signup.py --json`` (this bench in its own process, so
that its peak RSS is its own) as its ``signup`` flood and reads the printed dict.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import random
import resource
import sys
import tempfile
import time
import urllib.parse
from typing import Any

import altcha
import httpx

from distillguard.config import Settings
from distillguard.gateway.app import build_app
from distillguard.signup.service import SignupService

BROWSERS = [f"Mozilla/5.0 (X11; Linux x86_64) Browser/{v}" for v in range(120, 125)]
SYBIL_UA = "python-httpx/0.27"
DEFAULT_COST = 2000


class Captured:
    """Stands in for the SMTP mailer: keeps each message's link by recipient."""

    def __init__(self) -> None:
        self.links: dict[str, list[str]] = collections.defaultdict(list)
        self.sent = self.failed = 0

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def room(self) -> bool:
        return True

    def send(self, to: str, subject: str, text: str) -> bool:
        self.sent += 1
        for word in text.split():
            if word.startswith("https://"):
                self.links[to].append(word)
        return True


async def attempt(app: Any, addr: str, ua: str, email: str, mail: Captured) -> tuple[str, int]:
    """One sign-up and, if a link came, opening it; returns (outcome, puzzle level)."""
    transport = httpx.ASGITransport(app=app, client=(addr, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://g",
                                 headers={"user-agent": ua}) as http:
        got = await http.get("/signup/challenge")
        challenge = altcha.Challenge.from_dict(got.json())
        level = int(challenge.parameters.data["level"])
        solution = altcha.solve_challenge(challenge)
        payload = altcha.Payload(challenge, solution).to_base64()
        before = len(mail.links[email])
        resp = await http.post("/signup", json={"email": email, "altcha": payload})
        if resp.status_code != 202:
            return resp.json()["error"]["code"], level
        if len(mail.links[email]) == before:
            return "existing", level
        link = mail.links[email][-1]
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]
        verified = await http.post("/signup/verify", json={"token": token})
        status = verified.json().get("status", "error")
        return {"created": "accepted"}.get(status, status), level


def pbkdf2_seconds_per_iteration() -> float:
    start = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"x" * 20, b"y" * 16, 200_000, 32)
    return (time.perf_counter() - start) / 200_000


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    data = tempfile.mkdtemp(prefix="dg-signup-bench-")
    settings = Settings.load(env={}, data_dir=data, backend="echo", model_name="echo",
                             detection=False, signup_mode="verify",
                             public_url="https://api.example.test",
                             smtp_url="smtp://127.0.0.1:1", signup_pow_cost=args.pow_cost)
    app = build_app(settings)
    gateway = app.state.runtime
    mail = Captured()
    now = [1_000 * 3600.0]
    gateway.signup = SignupService(settings, mailer=mail, clock=lambda: now[0])
    honest_n = [0]

    def honest_email() -> str:
        honest_n[0] += 1
        domain = rng.choice(["gmail.com", "outlook.com", "uni-example.edu",
                             f"company{honest_n[0] % 40}.example"])
        return f"person{honest_n[0]}.{rng.randrange(10**6)}@{domain}"

    def honest_addr() -> str:
        return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    async with app.router.lifespan_context(app):
        # Warm-up: the breaker learns the usual hourly rate.
        t = now[0]
        end = t + args.warmup_hours * 3600
        while True:
            t += rng.expovariate(args.honest_rate / 3600)
            if t >= end:
                break
            now[0] = t
            await attempt(app, honest_addr(), rng.choice(BROWSERS), honest_email(), mail)
        learned = gateway.signup.breaker.state(end).rate
        # The measured hour: honest arrivals and the burst, merged in time.
        start = end
        arrivals: list[tuple[float, str, int]] = []
        t = start
        while True:
            t += rng.expovariate(args.honest_rate / 3600)
            if t >= start + 3600:
                break
            arrivals.append((t, "honest", 0))
        for i in range(args.sybils):
            arrivals.append((start + rng.uniform(0, args.burst_minutes * 60), "sybil", i))
        arrivals.sort()
        names = ["alexsmith", "jordanlee", "samtaylor", "caseymorgan"]
        prefixes = [f"203.0.{113 + p}" for p in range(args.prefixes)]
        outcomes: dict[str, collections.Counter] = {"honest": collections.Counter(),
                                                    "sybil": collections.Counter()}
        accepted_at: dict[str, list[float]] = {"honest": [], "sybil": []}
        levels: collections.Counter = collections.Counter()
        reopened = False
        wall = time.perf_counter()
        for ts, who, i in arrivals:
            now[0] = ts
            if args.reopen_after and not reopened and ts >= start + args.reopen_after * 60:
                await gateway.signup.reopen("analyst:bench")
                reopened = True
            if who == "honest":
                outcome, level = await attempt(app, honest_addr(), rng.choice(BROWSERS),
                                               honest_email(), mail)
            else:
                name = names[i % len(names)]
                if i % 2:  # dot and plus variants of one gmail mailbox
                    email = f"{name[0]}.{name[1:]}+{i}@gmail.com"
                else:
                    email = f"{name}{i}@catchall{i % 3}.example"
                addr = f"{rng.choice(prefixes)}.{rng.randrange(1, 255)}"
                outcome, level = await attempt(app, addr, SYBIL_UA, email, mail)
                levels[level] += 1
            outcomes[who][outcome] += 1
            if outcome == "accepted":
                accepted_at[who].append(ts)
        wall = time.perf_counter() - wall
        breaker = gateway.signup.breaker.state(now[0])
        tripped_log = [e for e in gateway.policy.audit(account="signup:breaker", limit=10)]
    per_iter = pbkdf2_seconds_per_iteration()
    sybil_cpu = sum(n * 256 * DEFAULT_COST * 2 ** lvl * per_iter for lvl, n in levels.items())
    burst_min = args.burst_minutes
    trip = next((e.ts for e in reversed(tripped_log) if e.op == "signup_breaker_tripped"),
                None)
    return {
        "learned_rate_per_hour": learned,
        "sybil_accepted_per_min_in_burst": len([t for t in accepted_at["sybil"]
                                                if t < start + burst_min * 60]) / burst_min,
        "sybil_accepted_total": len(accepted_at["sybil"]),
        "honest_accepted_per_min": len(accepted_at["honest"]) / 60.0,
        "honest_offered_per_min": sum(outcomes["honest"].values()) / 60.0,
        "sybil_outcomes": dict(outcomes["sybil"]), "honest_outcomes": dict(outcomes["honest"]),
        "sybil_puzzle_levels": dict(sorted(levels.items())),
        "sybil_cpu_s_at_default_cost": sybil_cpu,
        "breaker_tripped": trip is not None, "reopened": reopened,
        "breaker_state_at_end": "tripped" if breaker.tripped_at else "closed",
        "wall_s": wall,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The bench as a function (``bench/flood.py`` may call it); returns the figures."""
    return asyncio.run(_run(args))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sybils", type=int, default=1000)
    p.add_argument("--burst-minutes", type=float, default=10.0)
    p.add_argument("--prefixes", type=int, default=4, help="/24 networks of the burst")
    p.add_argument("--honest-rate", type=float, default=30.0, help="honest sign-ups/hour")
    p.add_argument("--warmup-hours", type=float, default=8.0)
    p.add_argument("--reopen-after", type=float, default=30.0,
                   help="minutes into the measured hour an admin reopens (0: never)")
    p.add_argument("--pow-cost", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true",
                   help="print the figures as one JSON object (with this process's peak RSS)")
    return p


def main() -> int:
    args = parser().parse_args()
    r = run(args)
    if args.json:
        # ru_maxrss is in KiB on Linux.
        r["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(r))
        return 0
    print(f"sybil burst: {args.sybils} sign-ups in {args.burst_minutes:g} min from "
          f"{args.prefixes} /24s, one fingerprint; honest {args.honest_rate:g}/h "
          f"(learned rate {r['learned_rate_per_hour']:.1f}/h after {args.warmup_hours:g} h)")
    print(f"  sybil keys per minute during the burst: {r['sybil_accepted_per_min_in_burst']:.2f}"
          f" ({r['sybil_accepted_total']} keys in all)")
    print(f"  honest keys per minute over the hour:   {r['honest_accepted_per_min']:.2f} "
          f"of {r['honest_offered_per_min']:.2f} offered")
    print(f"  sybil outcomes:  {r['sybil_outcomes']}")
    print(f"  honest outcomes: {r['honest_outcomes']}")
    print(f"  sybil puzzle levels served: {r['sybil_puzzle_levels']}; their CPU at the "
          f"default cost {DEFAULT_COST}: {r['sybil_cpu_s_at_default_cost']:.0f} s on this CPU")
    print(f"  breaker tripped: {r['breaker_tripped']}; admin reopened: {r['reopened']}; "
          f"at the end: {r['breaker_state_at_end']}")
    print(f"  wall time {r['wall_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
