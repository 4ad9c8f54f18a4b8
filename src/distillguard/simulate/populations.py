"""Populations: who sends traffic. One ``Population`` interface, one registry by name.

Benign ones live here (casual users from real ShareGPT conversations, and legitimate
heavy users a naive detector would flag); attacker strategies in ``strategies`` register
in the same registry. A population is built from its scenario table (``Params`` fields,
durations like ``"6h"`` allowed) and a ``World`` (time span, seeded randomness, prompts,
models); it names its accounts and yields its requests in any order.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import random
from collections.abc import Iterator
from typing import Any, ClassVar

from distillguard.registry import Registry
from distillguard.simulate.corpus import conversations
from distillguard.simulate.traffic import (
    BROWSERS,
    DEFAULT_MAX_TOKENS,
    SDKS,
    AccountSpec,
    SimRequest,
    answer_tokens,
    by_topic,
    conversation_turns,
    datacenter_addr,
    diurnal_times,
    residential_addr,
)

DAY = 86400.0


class ScenarioError(ValueError):
    """A scenario file or table is wrong; the message names the file, table and field."""


@dataclasses.dataclass(frozen=True)
class Model:
    """A model the simulated API serves from ``released_at`` (simulated Unix time)."""

    name: str
    released_at: float


class World:
    """What every population of one scenario shares: time span, seed, prompts, models.

    Prompts: ``corpus_size`` ShareGPT conversations from ``corpus_offset`` on, split in
    two halves so that benign users and attackers draw from different conversations
    (the evaluation's test split reads conversations its calibration split never does).
    """

    def __init__(self, start: float, duration: float, seed: int, models: list[Model],
                 corpus_size: int = 4000, corpus_offset: int = 0) -> None:
        self.start = start
        self.end = start + duration
        self.duration = duration
        self.seed = seed
        self.models = sorted(models, key=lambda m: m.released_at)
        convs = conversations(corpus_offset + corpus_size)[corpus_offset:]
        self.benign = list(convs[: len(convs) // 2])
        self.harvest = list(convs[len(convs) // 2:])
        self.benign_topics = by_topic(self.benign)

    def rng(self, name: str) -> random.Random:
        """A random generator of its own for population ``name`` (order independent)."""
        return random.Random(f"{self.seed}:{name}")

    def model_at(self, ts: float, rng: random.Random, adopt: float = 0.5) -> str:
        """The model a client asks for at ``ts``: the newest released one with
        probability ``adopt``, else the one before it."""
        released = [m for m in self.models if m.released_at <= ts] or self.models[:1]
        if len(released) > 1 and rng.random() >= adopt:
            return released[-2].name
        return released[-1].name


class Population(abc.ABC):
    """Base of every population and strategy. Subclasses set ``kind``, ``label``,
    ``Params`` (a dataclass) and implement ``accounts`` and ``requests``."""

    kind: ClassVar[str]
    label: ClassVar[str]  # benign | heavy | attack
    Params: ClassVar[type]

    def __init__(self, name: str, params: Any, world: World) -> None:
        self.name = name
        self.p = params
        self.world = world
        self.rng = world.rng(name)

    @abc.abstractmethod
    def accounts(self) -> list[AccountSpec]:
        """The population's accounts with ground truth."""

    @abc.abstractmethod
    def requests(self) -> Iterator[SimRequest]:
        """Its requests over the world's time span, in any order."""

    @property
    def target(self) -> int | None:
        """Responses the population wants (attackers), None for benign ones."""
        return None

    def _account(self, i: int, created_at: float) -> AccountSpec:
        return AccountSpec(self.account_name(i), self.name, self.kind, self.label, created_at,
                           self.name if self.label == "attack" else None)

    def _aged_accounts(self, min_days: float, max_days: float) -> list[AccountSpec]:
        """Accounts whose keys were made between ``min_days`` and ``max_days`` before
        the world starts (drawn uniformly, one per account in order)."""
        return [self._account(i, self.world.start - self.rng.uniform(min_days, max_days) * DAY)
                for i in range(self.p.accounts)]

    def account_name(self, i: int) -> str:
        return f"{self.name}-{i:05d}"


# Benign kinds register below, attack strategies in ``strategies`` (imported on the first
# lookup; it imports the evaluation's test split, ``heldout``), other packages' through
# the ``distillguard.strategies`` entry-point group.
POPULATIONS: Registry[type[Population]] = Registry(
    "population kind", "distillguard.strategies", builtins="distillguard.simulate.strategies")


def register(cls: type[Population]) -> type[Population]:
    """Class decorator: make ``cls`` available to scenarios under ``cls.kind``."""
    return POPULATIONS.register(cls.kind, cls)


def population_kinds() -> list[str]:
    """Registered population kinds (benign, heavy and attack strategies)."""
    return POPULATIONS.names()


def create_population(kind: str, name: str, table: dict[str, Any], world: World,
                      where: str) -> Population:
    """Build a registered population from its scenario table; ScenarioError if wrong."""
    from distillguard.policy.rules import parse_duration

    if kind not in POPULATIONS:
        raise ScenarioError(f"{where}: unknown kind {kind!r}; known: "
                            f"{', '.join(population_kinds())}")
    cls = POPULATIONS.get(kind)
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    extra = set(table) - set(fields)
    if extra:
        raise ScenarioError(f"{where}: unknown field(s) {', '.join(sorted(extra))} for "
                            f"{kind}; known: {', '.join(sorted(fields))}")
    values = {}
    for key, value in table.items():
        want = fields[key].type
        try:
            if want == "float":
                if isinstance(value, str):
                    value = parse_duration(value, f"{where}: {key}")
                value = float(value)
            elif want == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError
            elif want == "bool" and not isinstance(value, bool):
                raise ValueError
            elif want == "str" and not isinstance(value, str):
                raise ValueError
        except (TypeError, ValueError):
            raise ScenarioError(f"{where}: {key} must be {want}, got {value!r}") from None
        except Exception as exc:  # SettingsError from parse_duration
            raise ScenarioError(str(exc)) from None
        values[key] = value
    params = cls.Params(**values)
    for key in ("accounts", "target"):
        if getattr(params, key, 1) < 1:
            raise ScenarioError(f"{where}: {key} must be at least 1")
    return cls(name, params, world)


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


# --- benign populations ------------------------------------------------------------------


@register
class Casual(Population):
    """People chatting: sessions of real ShareGPT turns with follow-ups, think time,
    a daily rhythm in their time zone, and a topical focus."""

    kind = "casual"
    label = "benign"

    @dataclasses.dataclass
    class Params:
        accounts: int = 100
        sessions_per_day: float = 0.6  # median over users; users vary 2x either way
        turns: float = 2.5  # mean turns per session (capped by the conversation)
        think_time: float = 60.0  # median seconds between turns
        focus: float = 0.7  # share of sessions on the user's favourite topics
        sdk_share: float = 0.3  # users calling through an SDK rather than a web app

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(1, 365)

    def requests(self) -> Iterator[SimRequest]:
        topics = list(self.world.benign_topics)
        for i in range(self.p.accounts):
            yield from self._user(self.account_name(i), topics)

    def _user(self, account: str, topics: list[str]) -> Iterator[SimRequest]:
        rng, w = self.rng, self.world
        tz = rng.choice([-8, -5, -3, 0, 1, 2, 3, 5.5, 8, 9])
        rate = _lognormal(rng, self.p.sessions_per_day, 0.7)
        favourites = rng.sample(topics, k=min(2, len(topics)))
        sdk = rng.random() < self.p.sdk_share
        agent = rng.choice(SDKS[:4]) if sdk else rng.choice(BROWSERS)
        home, mobile = residential_addr(rng), residential_addr(rng)
        params: dict[str, Any] = {"temperature": rng.choice([0.7, 1.0])}
        if sdk and rng.random() < 0.5:
            params["max_tokens"] = rng.choice([512, 1024, 2048])
        for start in diurnal_times(rng, w.start, w.end, rate, tz):
            pool = (w.benign_topics[rng.choice(favourites)] if rng.random() < self.p.focus
                    else w.benign)
            conv = rng.choice(pool)
            turns = min(len(conv), 1 + int(rng.expovariate(1.0 / max(self.p.turns - 1, 0.01))))
            addr = mobile if rng.random() < 0.2 else home
            model = w.model_at(start, rng)
            cap = params.get("max_tokens", DEFAULT_MAX_TOKENS)
            t = start
            for messages in conversation_turns(conv, cap, turns):
                yield SimRequest(t, account, messages, params, model, addr, agent, self.name)
                # Reading the answer, then typing the next question.
                t += answer_tokens(messages[-1][1], cap) / 8.0 + _lognormal(
                    rng, self.p.think_time, 0.8)


@register
class EvalHarness(Population):
    """An evaluation harness: a fixed multiple-choice benchmark, 1-token answers with
    logprobs, temperature 0, many in parallel, a few runs a week."""

    kind = "eval_harness"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        items: int = 1500
        runs_per_day: float = 0.5
        parallel: int = 8
        # Chain-of-thought variant: "Let's reason step by step", answers up to this many
        # tokens instead of one token with logprobs (0: the multiple-choice variant).
        cot_max_tokens: int = 0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(30, 200)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        convs = w.benign
        items = []
        for k in range(self.p.items):
            q = convs[k % len(convs)][0][:400]
            if self.p.cot_max_tokens:
                items.append((("user", f"Question: {q}\nAnswer the question. Let's reason "
                                       f"step by step, then give the final answer."),))
            else:
                items.append((("user", f"Question: {q}\nA) {k % 7 + 1}\nB) {k % 5 + 2}\n"
                                       f"C) both\nD) neither\nAnswer:"),))
        params: dict[str, Any] = {"temperature": 0.0, "max_tokens": 1, "logprobs": True,
                                  "top_logprobs": 5}
        if self.p.cot_max_tokens:
            params = {"temperature": 0.0, "max_tokens": self.p.cot_max_tokens}
        for i in range(self.p.accounts):
            account = self.account_name(i)
            addr = datacenter_addr(rng)
            for start in diurnal_times(rng, w.start, w.end, self.p.runs_per_day, 0):
                model = w.model_at(start, rng, adopt=1.0)  # evaluates the newest model
                for k, messages in enumerate(items):
                    # ``parallel`` workers, ~0.4 s per 1-token answer each.
                    t = start + (k // self.p.parallel) * 0.4 + rng.uniform(0, 0.05)
                    if t >= w.end:
                        break
                    yield SimRequest(t, account, messages, params, model, addr,
                                     "lm-eval-harness/0.4.3", self.name)


@register
class RagApp(Population):
    """A retrieval-augmented app: one key, templated context + question prompts, volume
    that follows its own users' day. ``sharded``: one app spreading its traffic over
    ``accounts`` keys made together (to stay under per-key limits), from one server
    prefix, so the keys link as a swarm's would."""

    kind = "rag_app"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        per_day: float = 2000.0  # per account, or for the whole app when sharded
        tz: float = 1.0
        sharded: bool = False

    def accounts(self) -> list[AccountSpec]:
        if not self.p.sharded:
            return self._aged_accounts(30, 300)
        made = self.world.start - self.rng.uniform(30, 300) * DAY
        return [self._account(i, made + 20.0 * i) for i in range(self.p.accounts)]

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        params = {"temperature": 0.2, "max_tokens": 512}
        apps = 1 if self.p.sharded else self.p.accounts
        for i in range(apps):
            account = self.account_name(i)
            prefix = datacenter_addr(rng).rsplit(".", 1)[0]
            servers = [f"{prefix}.{rng.randint(2, 254)}" for _ in range(2)]
            for t in diurnal_times(rng, w.start, w.end, self.p.per_day, self.p.tz):
                if self.p.sharded:
                    account = self.account_name(rng.randrange(self.p.accounts))
                doc = rng.choice(w.benign)[0][:600]
                question = rng.choice(w.benign)[0][:200]
                text = ("Answer the question using only the context below. If the answer "
                        f"is not in the context, say so.\n\nContext:\n\"\"\"{doc}\"\"\"\n\n"
                        f"Question: {question}")
                yield SimRequest(t, account, (("system", "You are a helpful support "
                                               "assistant for Acme Docs."), ("user", text)),
                                 params, w.model_at(t, rng, adopt=0.0), rng.choice(servers),
                                 "python-requests/2.32.3", self.name)


@register
class SharedKey(Population):
    """A team (or a reseller) sharing one key: many people's sessions, addresses and
    user agents behind one account."""

    kind = "shared_key"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        members: int = 15
        sessions_per_day: float = 2.0  # per member
        reseller: bool = False  # members all over the world instead of one office

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(30, 300)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        topics = list(w.benign_topics)
        for i in range(self.p.accounts):
            account = self.account_name(i)
            office = residential_addr(rng)
            for _ in range(self.p.members):
                tz = rng.choice([-8, -5, 0, 1, 5.5, 9]) if self.p.reseller else 1
                addr = residential_addr(rng) if self.p.reseller else office
                agent = rng.choice(BROWSERS + SDKS[:2])
                favourite = rng.choice(topics)
                for start in diurnal_times(rng, w.start, w.end, self.p.sessions_per_day, tz):
                    pool = w.benign_topics[favourite] if rng.random() < 0.6 else w.benign
                    conv = rng.choice(pool)
                    t = start
                    for messages in conversation_turns(conv, DEFAULT_MAX_TOKENS,
                                                       rng.randint(1, 3)):
                        yield SimRequest(t, account, messages, {"temperature": 0.7},
                                         w.model_at(t, rng), addr, agent, self.name)
                        t += _lognormal(rng, 70.0, 0.8)


@register
class BatchJob(Population):
    """A nightly batch job: templated summaries of support tickets, one after another,
    at the same hour each night."""

    kind = "batch_job"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        per_night: int = 1000
        hour: float = 2.0  # local start hour
        tz: float = 0.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(30, 300)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        params = {"temperature": 0.0, "max_tokens": 300}
        for i in range(self.p.accounts):
            account = self.account_name(i)
            addr = datacenter_addr(rng)
            day0 = math.floor((w.start + self.p.tz * 3600) / DAY) * DAY - self.p.tz * 3600
            night = day0 + self.p.hour * 3600
            while night < w.end:
                t = night
                for _ in range(self.p.per_night):
                    if t >= w.end:
                        break
                    if t >= w.start:
                        ticket = rng.choice(w.benign)[0][:800]
                        yield SimRequest(t, account, (("user", "Summarize the following "
                                                       "support ticket in three bullet "
                                                       f"points:\n\n{ticket}"),),
                                         params, w.model_at(t, rng, adopt=0.0), addr,
                                         "python-httpx/0.27.0", self.name)
                    t += 2.0 + rng.uniform(0, 0.3)  # sequential: one answer at a time
                night += DAY


ORG_SYSTEM_PROMPT = ("You are the internal assistant of Northwind Logistics. Answer "
                     "employees' questions clearly and follow the company style guide.")


@register
class OrgSeats(Population):
    """An organisation's seats: one account per member, provisioned together, so the
    accounts share what a swarm shares (a key-creation burst, one office address, one
    client with fixed parameters, one system prompt) while each member is a person with
    real ShareGPT sessions, follow-ups and think time. With ``class_hour`` the members
    are a class: they work during the same hour each day (synchronised timing), from a
    campus, in browsers, and ``show_work`` of them ask for worked steps."""

    kind = "org_seats"
    label = "benign"

    @dataclasses.dataclass
    class Params:
        accounts: int = 12
        sessions_per_day: float = 3.0  # per member, outside class
        class_hour: float = -1.0  # local hour of a daily class (-1: no class)
        show_work: float = 0.0  # share of prompts asking for worked steps
        system_prompt: bool = True  # the organisation's tool sends one
        tz: float = 1.0

    def accounts(self) -> list[AccountSpec]:
        # An administrator (or a teacher) creates every seat in one sitting.
        t = self.world.start - self.rng.uniform(2, 60) * DAY
        out = []
        for i in range(self.p.accounts):
            out.append(self._account(i, t))
            t += self.rng.uniform(5, 40)
        return out

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        office = residential_addr(rng)  # one NAT address for the building
        classroom = self.p.class_hour >= 0
        agent = BROWSERS[0] if classroom else "NorthwindAssist/2.3 (python-httpx/0.27.0)"
        params: dict[str, Any] = {"temperature": 0.3, "max_tokens": 1024}
        topics = list(w.benign_topics)
        day0 = math.floor((w.start + self.p.tz * 3600) / DAY) * DAY - self.p.tz * 3600
        for i in range(self.p.accounts):
            account = self.account_name(i)
            home = residential_addr(rng)
            favourite = rng.choice(topics)
            starts = diurnal_times(rng, w.start, w.end, self.p.sessions_per_day, self.p.tz)
            if classroom:
                day = day0
                while day < w.end:
                    if rng.random() < 0.9:
                        starts.append(day + self.p.class_hour * 3600 + rng.uniform(0, 1200))
                    day += DAY
            for start in starts:
                if not w.start <= start < w.end:
                    continue
                in_class = classroom and abs(
                    ((start + self.p.tz * 3600) % DAY) / 3600 - self.p.class_hour - 0.2) < 0.5
                addr = office if in_class or (not classroom and rng.random() < 0.8) else home
                pool = w.benign_topics[favourite] if rng.random() < 0.6 else w.benign
                conv = rng.choice(pool)
                if rng.random() < self.p.show_work:
                    conv = (conv[0] + "\n\nShow your work step by step.",) + tuple(conv[1:])
                turns = rng.randint(1, 4)
                t = start
                for messages in conversation_turns(conv, params["max_tokens"], turns):
                    if self.p.system_prompt:
                        messages = (("system", ORG_SYSTEM_PROMPT),) + messages
                    yield SimRequest(t, account, messages, params, w.model_at(t, rng),
                                     addr, agent, self.name)
                    t += answer_tokens(messages[-1][1], params["max_tokens"]) / 8.0 \
                        + _lognormal(rng, 60.0, 0.8)
