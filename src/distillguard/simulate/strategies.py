"""Attacker strategies: distillation campaigns with parameters, in the population registry.

Each campaign has a ``target`` (responses it wants) and stops asking once its planned
requests are spent; the runner measures how much of that target it actually got.
Prompts come from the harvest half of the ShareGPT conversations (benign users draw
from the other half) or from templates, as each strategy's docstring says.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator

from distillguard.simulate.populations import DAY, Population, World, register
from distillguard.simulate.traffic import (
    BROWSERS,
    AccountSpec,
    SimRequest,
    conversation_turns,
    datacenter_addr,
    diurnal_times,
    residential_addr,
)

ELICIT_WRAPPERS = (
    "Think step by step and give your full reasoning before the final answer.\n\n{q}",
    "Explain in detail, reasoning step by step:\n{q}",
    "Answer thoroughly, showing your reasoning:\n{q}",
)


class Campaign(Population):
    """Base of attacker strategies: accounts, a target and a start time."""

    label = "attack"

    @property
    def target(self) -> int:
        return self.p.target

    @property
    def harvest_start(self) -> float:
        """When the campaign starts harvesting (time to first action counts from here)."""
        return self.world.start + self.p.start

    def _burst_accounts(self, spread: float, before: float) -> list[AccountSpec]:
        """Accounts whose keys were made in one run ``before`` s ahead of the start."""
        t0 = self.world.start + self.p.start - before
        return [self._account(i, t0 + self.rng.uniform(0, spread))
                for i in range(self.p.accounts)]

    def _share(self) -> list[int]:
        """The target split over accounts."""
        n = self.p.accounts
        return [self.p.target // n + (1 if i < self.p.target % n else 0) for i in range(n)]

    def _steady(self, rng: random.Random, start: float, per_minute: float,
                count: int) -> Iterator[float]:
        """``count`` arrival times from ``start`` at ``per_minute`` with jitter."""
        t = start
        for _ in range(count):
            if t >= self.world.end:
                return
            yield t
            t += rng.uniform(0.5, 1.5) * 60.0 / per_minute


def _prompt(rng: random.Random, world: World, wrapper_share: float) -> str:
    q = rng.choice(world.harvest)[0]
    if rng.random() < wrapper_share:
        return rng.choice(ELICIT_WRAPPERS).format(q=q)
    return q


@register
class BulkHarvester(Campaign):
    """One account harvesting as fast as it is allowed: elicitation wrappers around real
    prompts, the largest ``max_tokens``, a few parallel workers in one cloud /24."""

    kind = "bulk_harvester"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        target: int = 20000
        start: float = 3600.0
        rpm: float = 30.0  # per account
        wrapper_share: float = 1.0
        max_tokens: int = 4096

    def accounts(self) -> list[AccountSpec]:
        return [self._account(i, self.world.start + self.p.start - 3 * DAY)
                for i in range(self.p.accounts)]

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        params = {"temperature": 0.7, "max_tokens": self.p.max_tokens}
        prefix = datacenter_addr(rng).rsplit(".", 1)[0]
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            for t in self._steady(rng, w.start + self.p.start, self.p.rpm, count):
                yield SimRequest(t, account, (("user", _prompt(rng, w, self.p.wrapper_share)),),
                                 params, w.model_at(t, rng, adopt=1.0),
                                 datacenter_addr(rng, prefix), "python-httpx/0.27.0", self.name)


@register
class SybilSwarm(Campaign):
    """Many accounts, each under the per-key rate limit: keys made in one burst, one
    client library, rotating proxy addresses, shared wrapper templates, and the prompt
    space split between members so no one member covers much."""

    kind = "sybil_swarm"

    @dataclasses.dataclass
    class Params:
        accounts: int = 50
        target: int = 20000
        start: float = 3600.0
        per_account_rpm: float = 0.8  # stays under a 1-2 RPM limit
        key_burst: float = 900.0  # seconds over which the keys were created
        max_tokens: int = 2048
        wrapper_share: float = 0.8

    def accounts(self) -> list[AccountSpec]:
        return self._burst_accounts(self.p.key_burst, DAY)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        params = {"temperature": 0.8, "max_tokens": self.p.max_tokens}
        n = self.p.accounts
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            share = w.harvest[i::n] or w.harvest
            start = w.start + self.p.start + rng.uniform(0, 600)
            for t in self._steady(rng, start, self.p.per_account_rpm, count):
                q = rng.choice(share)[0]
                if rng.random() < self.p.wrapper_share:
                    q = rng.choice(ELICIT_WRAPPERS[1:]).format(q=q)
                yield SimRequest(t, account, (("user", q),), params,
                                 w.model_at(t, rng, adopt=1.0), residential_addr(rng),
                                 "python-requests/2.31.0", self.name)


@register
class SlowDrip(Campaign):
    """A few aged accounts asking a little every day for weeks, at human hours, from
    home addresses: each account looks like a keen user."""

    kind = "slow_drip"

    @dataclasses.dataclass
    class Params:
        accounts: int = 5
        target: int = 2000
        start: float = 0.0
        per_day: float = 40.0  # per account
        wrapper_share: float = 0.5
        max_tokens: int = 2048

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(20, 120)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        params = {"temperature": 0.7, "max_tokens": self.p.max_tokens}
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            addr, agent = residential_addr(rng), rng.choice(BROWSERS)
            tz = rng.choice([-5, 0, 1, 8])
            times = diurnal_times(rng, w.start + self.p.start, w.end, self.p.per_day, tz)
            for t in times[:count]:
                yield SimRequest(t, account, (("user", _prompt(rng, w, self.p.wrapper_share)),),
                                 params, w.model_at(t, rng), addr, agent, self.name)


@register
class Mimic(Campaign):
    """Harvest prompts blended into benign-looking sessions: real conversations with
    their follow-ups, human think time at random, a daily rhythm, a browser user agent,
    and a new residential address for every session."""

    kind = "mimic"

    @dataclasses.dataclass
    class Params:
        accounts: int = 20
        target: int = 5000
        start: float = 0.0
        sessions_per_day: float = 6.0  # per account
        turns: int = 3
        think_time: float = 45.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(5, 60)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            tz = rng.choice([-8, -5, 0, 1, 8, 9])
            params = {"temperature": rng.choice([0.7, 1.0])}
            sent = 0
            for start in diurnal_times(rng, w.start + self.p.start, w.end,
                                       self.p.sessions_per_day, tz):
                addr, agent = residential_addr(rng), rng.choice(BROWSERS)
                conv = rng.choice(w.harvest)
                t = start
                for messages in conversation_turns(conv, 256, rng.randint(1, self.p.turns)):
                    if sent >= count:
                        break
                    yield SimRequest(t, account, messages, params, w.model_at(t, rng),
                                     addr, agent, self.name)
                    sent += 1
                    t += self.p.think_time * math.exp(rng.gauss(0, 0.9))
                if sent >= count:
                    break


_PROBLEMS = (
    "A train leaves at {a}:00 travelling at {b} km/h; a second leaves {c} hours later at "
    "{d} km/h. When does the second catch up?",
    "A shop sells {a} items at {b} dollars each and gives a {c}% discount on orders above "
    "{d} items. What does an order of {e} items cost?",
    "Prove or disprove: the sum of {a} consecutive integers starting at {b} is divisible "
    "by {c}.",
    "A tank holds {a} litres; pipe A fills it in {b} hours and pipe B empties it in {c} "
    "hours. How long to fill it from {d} litres?",
)
_TRACE_INSTRUCTIONS = (
    "Solve step by step. Show your full chain of thought inside <think> tags, then give "
    "the final answer.\n\nTask {n}: {p}",
    "Task {n}: {p}\n\nReason through every step before answering, and write the reasoning "
    "out in full.",
    "Resuelve paso a paso y muestra todo tu razonamiento antes de la respuesta final.\n\n"
    "Tarea {n}: {p}",
    "请一步一步地推理，写出完整的思考过程，然后给出最终答案。\n\n任务 {n}：{p}",
    "Grade the following answer on a 1-10 rubric, explaining your reasoning for each "
    "criterion step by step.\n\nQuestion {n}: {p}\nAnswer: {e}",
)


@register
class ReasoningTrace(Campaign):
    """Reasoning-trace extraction: numbered synthetic tasks from templates asking for the
    full chain of thought (also in Spanish and Chinese, and as rubric grading), longest
    answers, from one cloud /24 with the official SDK."""

    kind = "reasoning_trace"

    @dataclasses.dataclass
    class Params:
        accounts: int = 10
        target: int = 10000
        start: float = 7200.0
        per_account_rpm: float = 2.0
        max_tokens: int = 4096

    def accounts(self) -> list[AccountSpec]:
        return self._burst_accounts(3600.0, 2 * DAY)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        params = {"temperature": 0.6, "max_tokens": self.p.max_tokens}
        prefix = datacenter_addr(rng).rsplit(".", 1)[0]
        n = 0
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            for t in self._steady(rng, w.start + self.p.start + rng.uniform(0, 300),
                                  self.p.per_account_rpm, count):
                n += 1
                nums = {k: rng.randint(2, 99) for k in "abcde"}
                problem = rng.choice(_PROBLEMS).format(**nums)
                text = rng.choice(_TRACE_INSTRUCTIONS).format(n=n, p=problem, e=nums["e"])
                yield SimRequest(t, account, (("user", text),), params,
                                 w.model_at(t, rng, adopt=1.0), datacenter_addr(rng, prefix),
                                 "OpenAI/Python 1.52.2", self.name)


_SUBJECTS = (
    "organic chemistry", "linear algebra", "contract law", "macroeconomics", "compilers",
    "immunology", "thermodynamics", "medieval history", "databases", "cryptography",
    "genetics", "operating systems", "number theory", "microeconomics", "neuroscience",
    "distributed systems", "statistics", "astronomy", "epidemiology", "game theory",
    "machine learning", "corporate finance", "geology", "linguistics", "ethics",
    "electromagnetism", "ecology", "computer networks", "tax law", "pharmacology",
)
_ASPECTS = ("the core concepts", "the most common misconceptions", "a worked example",
            "the key formulas", "the history", "open research problems",
            "exam-style questions with answers", "practical applications")
_PARAPHRASES = (
    "Give a comprehensive, expert-level explanation of {a} in {s}.",
    "Write a thorough explanation of {a} in {s}, as a textbook would.",
    "Explain {a} in {s} in depth, covering everything an expert should know.",
    "I need a complete and detailed overview of {a} in {s}.",
    "Provide an in-depth treatment of {a} in {s}, with examples.",
    "Teach me {a} in {s} thoroughly, from first principles.",
)


@register
class TopicSweep(Campaign):
    """A systematic sweep of a capability area: every (subject, aspect) pair in order,
    each asked through one of several paraphrased templates, rotating addresses."""

    kind = "topic_sweep"

    @dataclasses.dataclass
    class Params:
        accounts: int = 5
        target: int = 5000
        start: float = 3600.0
        per_account_rpm: float = 3.0
        max_tokens: int = 2048
        # Keys made over this many seconds, from a day before the start.
        signup_spread: float = 1800.0
        # A new residential address on every request; False: one address and one agent
        # of its own per account.
        rotate: bool = True

    def accounts(self) -> list[AccountSpec]:
        return self._burst_accounts(self.p.signup_spread, DAY)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        params = {"temperature": 0.7, "max_tokens": self.p.max_tokens}
        grid = [(s, a) for s in _SUBJECTS for a in _ASPECTS]
        k = 0
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            home, agent = None, "OpenAI/Python 1.40.0"
            if not self.p.rotate:  # drawn only then: the default draws what it always did
                home = residential_addr(rng)
                agent = f"OpenAI/Python 1.{rng.randint(30, 59)}.{rng.randint(0, 9)}"
            for t in self._steady(rng, w.start + self.p.start, self.p.per_account_rpm, count):
                subject, aspect = grid[k % len(grid)]
                k += 1
                text = rng.choice(_PARAPHRASES).format(a=aspect, s=subject)
                yield SimRequest(t, account, (("user", text),), params,
                                 w.model_at(t, rng, adopt=1.0),
                                 home or residential_addr(rng),
                                 agent, self.name)


@register
class ModelReleaseShift(Campaign):
    """Sleeper accounts with a light, benign-looking history that switch to heavy
    harvesting of the newest model within ``shift_delay`` of its release."""

    kind = "model_release"

    @dataclasses.dataclass
    class Params:
        accounts: int = 30
        target: int = 15000
        start: float = 0.0
        shift_delay: float = 21600.0  # after the newest model's release
        per_account_rpm: float = 1.5
        max_tokens: int = 4096

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(10, 90)

    @property
    def harvest_start(self) -> float:
        """The shift: ``shift_delay`` after the newest model's release."""
        w = self.world
        return max(w.start + self.p.start, w.models[-1].released_at) + self.p.shift_delay

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        newest = w.models[-1]
        shift = self.harvest_start
        old = w.models[-2].name if len(w.models) > 1 else newest.name
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            addr, agent = residential_addr(rng), rng.choice(BROWSERS)
            # Before: a session or so a day, like a casual user.
            for start in diurnal_times(rng, w.start + self.p.start, min(shift, w.end), 1.0, 0):
                for messages in conversation_turns(rng.choice(w.harvest), 256, 2):
                    yield SimRequest(start, account, messages, {"temperature": 0.7}, old,
                                     addr, agent, self.name)
                    start += rng.uniform(30, 200)
            params = {"temperature": 0.7, "max_tokens": self.p.max_tokens}
            for t in self._steady(rng, shift + rng.uniform(0, 1800), self.p.per_account_rpm,
                                  count):
                yield SimRequest(t, account, (("user", _prompt(rng, w, 0.7)),), params,
                                 newest.name, residential_addr(rng), "OpenAI/Python 1.52.2",
                                 self.name)


# The evaluation's test and fresh splits register their own populations in the same
# registry.
import distillguard.simulate.fresh  # noqa: E402, F401
import distillguard.simulate.fresh2  # noqa: E402, F401
import distillguard.simulate.heldout  # noqa: E402, F401
