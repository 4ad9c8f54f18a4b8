"""The ``fresh2`` split: strategies and benign populations written from scratch, in one
go, without running detection on them (no replay, no detection pipeline, no detector
signal or pattern applied to their prompts, nothing tuned against a detector's output).
The attackers were designed by reading the open-source detection code, as a real
distiller could; the benign populations from what real traffic of their kind looks like.
Kinds carry the prefix ``g_`` and meet no other split's.

Attack strategies (label ``attack``):

- ``g_worked_solutions``: an education app's backend asking for model solutions and
  marking guides to homework questions, per-student ids, some student follow-ups.
- ``g_question_forge``: a sequential script on few aged keys asking, per real seed
  message, for several new questions on its subject with a full answer to each.
- ``g_answer_ladder``: multi-turn self-instruct chains: each next question quotes a
  phrase of the model's previous answer and asks to expand, object or go harder.
- ``g_vertical_sweep``: a tax and accounting "vertical SaaS" sweeping its domain's
  grid (entity x event x jurisdiction) through many question forms, plus real questions.
- ``g_faq_fill``: long "documents" (FAQ drafts, reader mailbags, workshop notes) that
  are really lists of a dozen harvested questions to answer, from a few keys.
- ``g_takeover``: accounts with months of light human use taken over one by one; the
  owner keeps chatting while the new holder harvests from a cloud range.
- ``g_dust_swarm``: one crawl spread over a few hundred accounts made over three weeks,
  each sending a handful of requests in its life from its own address and browser.
- ``g_release_rush``: keys made right after a new model's release that pull answers
  from it only, with a few parallel workers per key.

Benign populations (``benign`` for people, ``heavy`` for heavy legitimate users):

- ``g_hobbyist`` (benign): tinkerers with irregular evening project bursts of long
  coding sessions, odd single questions, and now and then a small script run on a VPS.
- ``g_commuter`` (benign): people on a mobile chat app at commute and evening hours,
  short questions, a new carrier address every session.
- ``g_law_firm`` (heavy): a law firm's document assistant on one key: lawyers' tasks
  over pasted documents at office hours, with follow-up edits.
- ``g_label_team`` (heavy): a data-labelling team pre-annotating batches (intent labels
  or entity spans) at temperature 0 with a few parallel workers.
- ``g_news_digest`` (heavy): a news app summarising each hour's new articles and
  tagging them, around the clock, quieter at night.
- ``g_npc_dialogue`` (heavy): a game studio generating NPC dialogue lines in batches
  (several choices per request) and its writers iterating by hand.
- ``g_lab_nightly`` (heavy): an academic lab's nightly evaluation suite (greedy,
  chain-of-thought and sampled items) and its students' notebook sessions.
- ``g_bank_bot`` (heavy): a bank's customer chatbot in English and Spanish: templated
  intents, multi-turn sessions, a policy excerpt in the system prompt.

``PEOPLE`` and ``ATTACKS`` are the split's tables, as ``splits.build`` takes them.
Prompts come from real ShareGPT conversations of the world (benign half for benign
populations, harvest half for attackers) or from templates where an app would template.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator
from typing import Any

from distillguard.simulate.populations import (
    DAY,
    Population,
    World,
    _lognormal,
    register,
)
from distillguard.simulate.strategies import Campaign
from distillguard.simulate.traffic import (
    BROWSERS,
    SDKS,
    AccountSpec,
    SimRequest,
    answer_text,
    answer_tokens,
    conversation_turns,
    datacenter_addr,
    diurnal_times,
    residential_addr,
)

Messages = tuple[tuple[str, str], ...]


# --- helpers --------------------------------------------------------------------------


def _servers(rng: random.Random, n: int) -> list[str]:
    """``n`` server addresses in one cloud /24."""
    prefix = datacenter_addr(rng).rsplit(".", 1)[0]
    return [datacenter_addr(rng, prefix) for _ in range(n)]


def _local_days(world: World, tz: float) -> Iterator[float]:
    """Local midnights (UTC seconds) at ``tz`` from the day holding the world's start."""
    day = math.floor((world.start + tz * 3600) / DAY) * DAY - tz * 3600
    while day < world.end:
        yield day
        day += DAY


def _generation_s(rng: random.Random, text: str, cap: int) -> float:
    """Seconds the model takes to answer ``text`` (35-70 tokens a second)."""
    return answer_tokens(text, cap) / rng.uniform(35.0, 70.0)


def _with_answers(turns: list[str], cap: int) -> Messages:
    """User turns interleaved with the simulated answers to all but the last."""
    out: list[tuple[str, str]] = []
    for k, text in enumerate(turns):
        out.append(("user", text))
        if k < len(turns) - 1:
            out.append(("assistant", answer_text(text, cap)))
    return tuple(out)


MORE_BROWSERS = BROWSERS + (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/125.0 Safari/537.36 "
    "Edg/125.0",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 Chrome/126.0 Mobile "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/126.0 "
    "Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0",
)


# --- attack strategies ------------------------------------------------------------------

STUDYPAL_SYSTEM = ("You are StudyPal, a patient tutor for secondary and university "
                   "students. Be accurate and complete; students check their own work "
                   "against your answers.")
_SOLUTION_ASKS = (
    "A student submitted this homework question. Write the model solution a teacher "
    "would hand back, then a marking guide that says which parts earn credit.\n\n"
    "Question: {q}",
    "Prepare a worked solution for the following, as it would appear in a textbook's "
    "answer key, followed by the three mistakes students make most often.\n\n{q}",
    "Homework help request:\n{q}\n\nWrite a full model answer at the level of a strong "
    "student, then a short note for the teacher on how to award marks.",
    "Create the answer-key entry for this exercise: the final answer, every intermediate "
    "result, and why each move is made.\n\n{q}",
    "The learner asked: \"{q}\"\nGive a complete solution they can compare their own "
    "attempt with, then two practice variations with their solutions.",
    "{q}\n\n(Answer key format: full solution first, then the marking points.)",
)
_STUCK = (
    "I don't get the second part, can you go over it more slowly?",
    "Why does that step work?",
    "I got a different answer, where could I have gone wrong?",
    "Can you give me one more like this to practise?",
    "Can you say it more simply?",
)


@register
class WorkedSolutions(Campaign):
    """An education app's backend: model solutions and marking guides for real questions
    (harvest half), asked in several phrasings under its system prompt, with a student
    id in ``user``; some requests carry a student's follow-up after the answer. A few
    aged keys (school licences), two servers each in a cloud /24 of their own, volume
    following each deployment's students' day."""

    kind = "g_worked_solutions"

    @dataclasses.dataclass
    class Params:
        accounts: int = 4
        target: int = 6000
        start: float = 0.0
        per_day: float = 2500.0  # per account, at its students' daily rhythm
        follow_up: float = 0.3  # share of requests that are a student's follow-up
        students: int = 400  # per account
        max_tokens: int = 2400

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(45, 240)

    def requests(self) -> Iterator[SimRequest]:
        w, rng, cap = self.world, self.rng, self.p.max_tokens
        agent = "StudyPal-backend/3.4 node-fetch/3.3.2"
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            servers = _servers(rng, 2)
            tz = rng.choice([-5.0, 0.0, 5.5, 8.0])
            students = [f"stu-{rng.getrandbits(32):08x}" for _ in range(self.p.students)]
            times = diurnal_times(rng, w.start + self.p.start, w.end, self.p.per_day, tz)
            for t in times[:count]:
                conv = rng.choice(w.harvest)
                ask = rng.choice(_SOLUTION_ASKS).format(q=conv[0])
                turns = [ask]
                if rng.random() < self.p.follow_up:
                    turns.append(conv[1] if len(conv) > 1 else rng.choice(_STUCK))
                params = {"temperature": rng.choice([0.3, 0.4, 0.5]),
                          "max_tokens": rng.choice([cap, cap - 400, cap - 800]),
                          "user": rng.choice(students)}
                yield SimRequest(t, account, (("system", STUDYPAL_SYSTEM),)
                                 + _with_answers(turns, cap), params,
                                 w.model_at(t, rng, adopt=0.8), rng.choice(servers), agent,
                                 self.name)


_COUNTS = ("six", "seven", "eight", "ten", "twelve")
_FORGE_ASKS = (
    "Here is a message someone sent to an AI assistant:\n\n\"{q}\"\n\nThink of {k} other "
    "requests different people might send about the same subject, some easier and some "
    "harder, worded in different ways. For each, write the request on a line starting "
    "with 'Q:' and then a complete, high-quality reply starting with 'A:'.",
    "Subject seed: {q}\n\nWrite {k} distinct things a user could ask on this subject, and "
    "answer each in full. Format: Q: ... then A: ...",
    "I'm putting together an FAQ. Starting from this example question ({q}), come up with "
    "{k} more that a curious reader might ask, and answer all of them properly.",
    "Imagine {k} different users, from beginner to expert, each asking about the topic of "
    "the text below. Write what each would ask and the best possible answer.\n\n{q}",
)


@register
class QuestionForge(Campaign):
    """Synthetic-instruction generation from few aged keys: per real seed message, ask
    for several new questions on its subject with a full answer to each (one response
    holds many training pairs). A sequential script: next request once the answer is in,
    a restart pause now and then, high temperature for variety, long outputs."""

    kind = "g_question_forge"

    @dataclasses.dataclass
    class Params:
        accounts: int = 2
        target: int = 1200
        start: float = 1800.0
        max_tokens: int = 3800
        restart_chance: float = 0.01  # per request: the script stops for a while

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(35, 120)

    def requests(self) -> Iterator[SimRequest]:
        w, rng, cap = self.world, self.rng, self.p.max_tokens
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            addr = residential_addr(rng)
            agent = rng.choice(["python-httpx/0.27.2", "OpenAI/Python 1.51.0"])
            t = w.start + self.p.start + rng.uniform(0, 900)
            for _ in range(count):
                if t >= w.end:
                    break
                seed = rng.choice(w.harvest)[0][:600]
                text = rng.choice(_FORGE_ASKS).format(q=seed, k=rng.choice(_COUNTS))
                limit = rng.randint(cap - 500, cap)
                params = {"temperature": rng.choice([0.9, 1.0, 1.1]), "top_p": 0.95,
                          "max_tokens": limit}
                yield SimRequest(t, account, (("user", text),), params,
                                 w.model_at(t, rng, adopt=1.0), addr, agent, self.name)
                # Waits for the whole answer: many pairs, most of ``limit`` tokens.
                t += limit * rng.uniform(0.6, 1.0) / rng.uniform(35.0, 70.0) \
                    + rng.uniform(0.5, 4.0)
                if rng.random() < self.p.restart_chance:
                    t += rng.uniform(600, 3600)


_LADDER = (
    "You wrote \"{span}\". Expand on that point with a concrete example.",
    "Take the part about \"{span}\" further: what would an expert add?",
    "What is the strongest objection to \"{span}\", and how would you answer it?",
    "Turn \"{span}\" into a harder question, then answer it.",
    "Go deeper on \"{span}\". What do most explanations leave out?",
    "How would \"{span}\" change in a different setting? Give a case.",
)


@register
class AnswerLadder(Campaign):
    """Multi-turn self-instruct chains: a real seed question, then each next question
    quotes a phrase of the model's previous answer and asks to expand it, object to it
    or turn it into a harder question, carrying the last exchanges as history. Keys made
    over weeks, one home address and client each, chains at the account's waking
    hours, a few seconds between turns (a script reads the answer)."""

    kind = "g_answer_ladder"

    @dataclasses.dataclass
    class Params:
        accounts: int = 8
        target: int = 3000
        start: float = 0.0
        chains_per_day: float = 50.0  # per account
        depth: int = 6  # mean turns per chain
        max_tokens: int = 1536

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(14, 45)

    def requests(self) -> Iterator[SimRequest]:
        w, rng, cap = self.world, self.rng, self.p.max_tokens
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            addr, agent = residential_addr(rng), rng.choice(SDKS[:3])
            tz = rng.choice([-6.0, 1.0, 3.0, 7.0])
            params = {"temperature": rng.choice([0.6, 0.8]), "max_tokens": cap}
            sent = 0
            for start in diurnal_times(rng, w.start + self.p.start, w.end,
                                       self.p.chains_per_day, tz):
                history = [("user", rng.choice(w.harvest)[0])]
                t = start
                for _ in range(max(2, int(rng.gauss(self.p.depth, 2)))):
                    if sent >= count:
                        break
                    last = history[-1][1]
                    # The last three exchanges and the new question: starts with a user turn.
                    yield SimRequest(t, account, tuple(history[-7:]), params,
                                     w.model_at(t, rng, adopt=1.0), addr, agent, self.name)
                    sent += 1
                    answer = answer_text(last, cap)
                    words = answer.split()
                    a = rng.randrange(max(1, len(words) - 8))
                    span = " ".join(words[a:a + rng.randint(4, 9)])
                    history += [("assistant", answer),
                                ("user", rng.choice(_LADDER).format(span=span))]
                    t += _generation_s(rng, last, cap) + _lognormal(rng, 6.0, 0.5)
                if sent >= count:
                    break


LEDGERMIND_SYSTEM = ("You are LedgerMind, an assistant for accountants and tax preparers. "
                     "Answer precisely for the jurisdiction given, cite the rule or form "
                     "where you can, and flag anything that needs a professional's review.")
_TAX_ENTITIES = (
    "sole trader", "single-member LLC", "S corporation", "two-partner partnership",
    "registered charity", "freelance designer paid partly in crypto",
    "landlord with two rental flats", "remote employee working from abroad",
    "retired couple drawing a pension", "start-up with seed funding",
    "family trust", "e-commerce seller shipping to the EU", "gig-economy driver",
    "dentist running her own practice", "farm partnership",
)
_TAX_EVENTS = (
    "sells a rental property at a gain", "receives stock options from an employer",
    "hires a first employee", "moves to another state in the middle of the year",
    "gets a late payment notice", "buys a company car", "inherits shares",
    "closes the business", "receives a grant", "pays a contractor overseas",
    "starts charging VAT or sales tax", "works from home part of the week",
    "makes a large charitable donation", "changes the accounting year end",
)
_JURISDICTIONS = ("US federal", "California", "New York", "Texas", "the UK", "Ontario",
                  "Germany", "Australia", "India", "Ireland")
_TAX_FORMS = (
    "Client is a {e} in {j} who {v}. What are the filing obligations and deadlines?",
    "{j}: a {e} {v}. How is this treated for income tax, and what records should we keep?",
    "Quick one for a {e} ({j}) who {v}: any reliefs or elections we should consider?",
    "Our client, a {e}, {v}. Jurisdiction: {j}. Walk me through the tax consequences and "
    "the forms involved.",
    "What changes for a {e} in {j} when the client {v}? Please list the risks first.",
    "Prepare a short client memo: {e}, {j}, client {v}. Cover tax treatment, deadlines and "
    "documents to request.",
    "In {j}, if a {e} {v}, is there a withholding or reporting requirement? Cite the rule.",
    "Compare the options for a {e} in {j} who {v}, with the cash-flow effect of each.",
    "Checklist request ({j}): {e} who {v}. What should the preparer verify?",
    "A {e} in {j} {v} and asks whether to amend last year's return. What do we tell them?",
)


@register
class VerticalSweep(Campaign):
    """A "vertical SaaS" front for tax and accounting that sweeps its domain: every
    (entity, event, jurisdiction) case in one shuffled order, each through one of many
    question forms, plus real business questions (harvest half) as "client questions".
    Aged keys, one per region, under the product's system prompt, fixed parameters, a
    firm id in ``user``, volume following each region's working day."""

    kind = "g_vertical_sweep"

    @dataclasses.dataclass
    class Params:
        accounts: int = 3
        target: int = 8000
        start: float = 0.0
        per_day: float = 3000.0  # per account
        real_share: float = 0.2  # share of real client questions from the harvest half
        max_tokens: int = 1500

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(60, 240)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        grid = [(e, v, j) for e in _TAX_ENTITIES for v in _TAX_EVENTS for j in _JURISDICTIONS]
        rng.shuffle(grid)
        business = [c for c in w.harvest if any(k in c[0].lower() for k in
                                                ("tax", "business", "company", "account",
                                                 "invoice", "finance", "price"))] or w.harvest
        agent = "LedgerMind-api/2.8 python-httpx/0.27.0"
        k = 0
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            servers = _servers(rng, 2)
            tz = (-5.0, 0.0, 10.0)[i % 3]
            firms = [f"firm-{rng.getrandbits(24):06x}" for _ in range(60)]
            times = diurnal_times(rng, w.start + self.p.start, w.end, self.p.per_day, tz)
            for t in times[:count]:
                if rng.random() < self.p.real_share:
                    text = "Client question: " + rng.choice(business)[0]
                else:
                    e, v, j = grid[k % len(grid)]
                    k += 1
                    text = rng.choice(_TAX_FORMS).format(e=e, v=v, j=j)
                params = {"temperature": 0.2, "max_tokens": self.p.max_tokens,
                          "user": rng.choice(firms)}
                yield SimRequest(t, account, (("system", LEDGERMIND_SYSTEM), ("user", text)),
                                 params, w.model_at(t, rng, adopt=0.5), rng.choice(servers),
                                 agent, self.name)


_DOCUMENTS = (
    ("Help-centre FAQ draft (v{n}). Several answers are still missing. Write the missing "
     "answer under each question, fully enough that a customer would not need to contact "
     "support.\n\n", "Q{i}. {q}\nA{i}. [missing]\n\n"),
    ("Reader mailbag for this week's column. Answer each letter in turn, a few paragraphs "
     "each, in a friendly expert voice.\n\n", "Letter {i}:\n{q}\n\n"),
    ("Open questions collected at the end of workshop #{n}. Please write an answer to each "
     "for the follow-up email to participants.\n\n", "{i}) {q}\n"),
    ("Onboarding wiki page - 'Questions new hires ask'. Fill in the answers; keep the "
     "numbering.\n\n", "### {i}. {q}\nAnswer:\n\n"),
)


@register
class FaqFill(Campaign):
    """Harvest through long-context "documents": an FAQ draft, a reader mailbag, a
    workshop's open questions, a wiki page, each really a list of about a dozen short
    real questions (harvest half) to answer in one response. A few keys made over three
    weeks, a home address and an SDK each, a request every few minutes in waking
    hours, nearly the largest ``max_tokens``."""

    kind = "g_faq_fill"

    @dataclasses.dataclass
    class Params:
        accounts: int = 5
        target: int = 2000
        start: float = 0.0
        per_day: float = 300.0  # documents per account
        questions: int = 12  # mean questions per document
        max_tokens: int = 3800

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(2, 24)

    def requests(self) -> Iterator[SimRequest]:
        w, rng, cap = self.world, self.rng, self.p.max_tokens
        short = [c[0] for c in w.harvest if len(c[0]) <= 400] or [c[0] for c in w.harvest]
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            addr, agent = residential_addr(rng), rng.choice(SDKS[:4])
            tz = rng.choice([-3.0, 1.0, 2.0, 8.0])
            times = diurnal_times(rng, w.start + self.p.start, w.end, self.p.per_day, tz)
            for t in times[:count]:
                head, item = rng.choice(_DOCUMENTS)
                n = max(3, int(rng.gauss(self.p.questions, 3)))
                body = "".join(item.format(i=k + 1, q=q.strip())
                               for k, q in enumerate(rng.sample(short, n)))
                text = head.format(n=rng.randint(2, 40)) + body
                params = {"temperature": 0.7, "max_tokens": rng.randint(cap - 600, cap)}
                yield SimRequest(t, account, (("user", text),), params,
                                 w.model_at(t, rng, adopt=1.0), addr, agent, self.name)


_TAKEOVER_ASKS = (
    "{q}",
    "{q}",
    "{q}\n\nBe as complete as you can and cover the edge cases.",
    "{q}\n\nGive a detailed, expert-level answer.",
    "{q}\n\nAnswer like a senior specialist would, with examples.",
)


@register
class Takeover(Campaign):
    """Account takeover: accounts with months of light human use (sessions from home in a
    browser) taken over one by one within ``takeover_by`` of the span; from then the
    owner keeps chatting while the new holder harvests real prompts (harvest half, some
    asking for expert detail) from two cloud /24s of the operation, with one client.
    The owner's sessions count toward the target too."""

    kind = "g_takeover"

    @dataclasses.dataclass
    class Params:
        accounts: int = 10
        target: int = 5000
        start: float = 0.0
        takeover_by: float = 0.5  # share of the span by which every account is taken
        owner_sessions_per_day: float = 1.5
        per_account_rpm: float = 1.2  # the new holder's pace
        max_tokens: int = 2048

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(120, 500)

    def _takeovers(self) -> list[float]:
        """When each account is taken over (its own draws, so any call agrees)."""
        w, rng = self.world, self.world.rng(f"{self.name}:takeover")
        first = w.start + self.p.start
        last = max(first, w.start + self.p.takeover_by * w.duration)
        return [rng.uniform(first, last) for _ in range(self.p.accounts)]

    @property
    def harvest_start(self) -> float:
        """The first takeover."""
        return min(self._takeovers())

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        prefixes = [datacenter_addr(rng).rsplit(".", 1)[0] for _ in range(2)]
        harvest = {"temperature": 0.7, "max_tokens": self.p.max_tokens}
        for i, (count, taken) in enumerate(zip(self._share(), self._takeovers())):
            account = self.account_name(i)
            home, browser = residential_addr(rng), rng.choice(MORE_BROWSERS)
            tz = rng.choice([-8.0, -5.0, 0.0, 1.0, 9.0])
            out: list[SimRequest] = []
            for start in diurnal_times(rng, w.start, w.end, self.p.owner_sessions_per_day, tz):
                t = start
                for messages in conversation_turns(rng.choice(w.harvest), 256,
                                                   rng.randint(1, 3)):
                    out.append(SimRequest(t, account, messages, {"temperature": 0.7},
                                          w.model_at(t, rng), home, browser, self.name))
                    t += _lognormal(rng, 70.0, 0.8)
            prefix = prefixes[i % 2]
            t = taken
            while t < w.end and len(out) < 2 * count:
                text = rng.choice(_TAKEOVER_ASKS).format(q=rng.choice(w.harvest)[0])
                out.append(SimRequest(t, account, (("user", text),), harvest,
                                      w.model_at(t, rng, adopt=1.0),
                                      datacenter_addr(rng, prefix), "python-requests/2.31.0",
                                      self.name))
                t += 60.0 / self.p.per_account_rpm * _lognormal(rng, 1.0, 0.4)
            out.sort(key=lambda r: r.ts)
            yield from out[:count]


@register
class DustSwarm(Campaign):
    """One crawl spread thin: a few hundred accounts made one by one over three weeks,
    each sending only a handful of requests in its life (its share of the target) within
    an hour or so, from its own proxy address and browser; the crawl's conversations
    (harvest half) dealt out in order so no two accounts ask the same, sometimes with
    the conversation's real follow-up."""

    kind = "g_dust_swarm"

    @dataclasses.dataclass
    class Params:
        accounts: int = 320
        target: int = 1600
        start: float = 0.0
        signup_days: float = 21.0  # keys made one by one over this many days
        follow_up: float = 0.25

    def accounts(self) -> list[AccountSpec]:
        w, rng = self.world, self.rng
        made = sorted(w.start - rng.uniform(0.05, self.p.signup_days) * DAY
                      for _ in range(self.p.accounts))
        return [self._account(i, t) for i, t in enumerate(made)]

    def requests(self) -> Iterator[SimRequest]:
        w, rng, n = self.world, self.rng, self.p.accounts
        begin = w.start + self.p.start
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            addr, agent = residential_addr(rng), rng.choice(MORE_BROWSERS + SDKS[:2])
            params: dict[str, Any] = {}
            if rng.random() < 0.6:
                params["temperature"] = rng.choice([0.7, 1.0])
            if rng.random() < 0.7:
                params["max_tokens"] = rng.choice([1024, 2048])
            cap = params.get("max_tokens", 256)
            t = rng.uniform(begin, max(begin, w.end - 3600.0))
            sent, k = 0, 0
            while sent < count:
                conv = w.harvest[(i + k * n) % len(w.harvest)]
                k += 1
                turns = 2 if len(conv) > 1 and rng.random() < self.p.follow_up else 1
                for messages in conversation_turns(conv, cap, turns):
                    if sent >= count:
                        break
                    yield SimRequest(t, account, messages, params,
                                     w.model_at(t, rng, adopt=0.7), addr, agent, self.name)
                    sent += 1
                    t += _lognormal(rng, 90.0, 0.7)


@register
class ReleaseRush(Campaign):
    """Distilling a new release: keys made within ``signup_window`` after the newest
    model's release (or ``start`` in a world with one model) pull answers from that
    model only: real prompts (harvest half) in order, a few parallel workers per key,
    each sending as soon as its last answer is in, from a cloud /24 per key."""

    kind = "g_release_rush"

    @dataclasses.dataclass
    class Params:
        accounts: int = 6
        target: int = 8000
        start: float = 0.0  # earliest moment counted as the release
        signup_window: float = 7200.0
        workers: int = 3  # per account
        max_tokens: int = 3000

    def _release(self) -> float:
        return max(self.world.models[-1].released_at, self.world.start + float(self.p.start))

    def _signups(self) -> list[float]:
        """When each key is made (its own draws, so any call agrees)."""
        rng = self.world.rng(f"{self.name}:signup")
        release = self._release()
        return sorted(release + rng.uniform(0, self.p.signup_window)
                      for _ in range(self.p.accounts))

    @property
    def harvest_start(self) -> float:
        """The release the campaign waited for."""
        return self._release()

    def accounts(self) -> list[AccountSpec]:
        return [self._account(i, t) for i, t in enumerate(self._signups())]

    def requests(self) -> Iterator[SimRequest]:
        w, rng, cap = self.world, self.rng, self.p.max_tokens
        newest = w.models[-1].name
        params = {"temperature": 0.7, "max_tokens": cap}
        cursor = rng.randrange(len(w.harvest))
        for i, (count, made) in enumerate(zip(self._share(), self._signups())):
            account = self.account_name(i)
            prefix = datacenter_addr(rng).rsplit(".", 1)[0]
            clocks = [made + rng.uniform(300, 1200) for _ in range(self.p.workers)]
            for _ in range(count):
                worker = min(range(len(clocks)), key=clocks.__getitem__)
                t = clocks[worker]
                if t >= w.end:
                    break
                q = w.harvest[cursor % len(w.harvest)][0]
                cursor += 1
                messages: Messages = (("user", q),)
                if rng.random() < 0.3:
                    messages = (("system", "You are a helpful assistant."),) + messages
                yield SimRequest(t, account, messages, params, newest,
                                 datacenter_addr(rng, prefix), "OpenAI/Python 1.54.3",
                                 self.name)
                clocks[worker] = t + _generation_s(rng, q, cap) + rng.uniform(0.2, 1.5)


# --- benign populations -----------------------------------------------------------------

_TINKER_TOOLS = ("continue-vscode/0.9.2", "aider/0.62.1", "Open WebUI/0.3.35")


@register
class Hobbyist(Population):
    """Tinkerers: most days quiet or a stray question, then an evening (or weekend
    afternoon) project burst of long sessions, mostly on their favourite topic (code for
    most), through an SDK, an editor plugin or a self-hosted UI with settings of their
    own (some max out ``max_tokens``); some now and then run a small script of their
    own prompts from a rented VPS."""

    kind = "g_hobbyist"
    label = "benign"

    @dataclasses.dataclass
    class Params:
        accounts: int = 45
        bursts_per_day: float = 0.3  # project evenings per user per day
        questions_per_day: float = 0.8  # stray single questions
        script_share: float = 0.15  # users who sometimes run a script

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(3, 400)

    def requests(self) -> Iterator[SimRequest]:
        w = self.world
        code = w.benign_topics.get("code") or w.benign
        for i in range(self.p.accounts):
            yield from self._user(self.account_name(i), code)

    def _user(self, account: str, code: list[tuple[str, ...]]) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        tz = rng.choice([-8.0, -5.0, -3.0, 0.0, 1.0, 2.0, 5.5, 8.0, 10.0])
        home = residential_addr(rng)
        agent = rng.choice(SDKS[:4] + _TINKER_TOOLS)
        params: dict[str, Any] = {}
        if rng.random() < 0.6:
            params["temperature"] = rng.choice([0.0, 0.2, 0.7, 1.0])
        if rng.random() < 0.5:
            params["max_tokens"] = rng.choice([1024, 2048, 4096])
        cap = params.get("max_tokens", 256)
        pool = code if rng.random() < 0.7 else rng.choice(list(w.benign_topics.values()))
        scripter = rng.random() < self.p.script_share
        for day in _local_days(w, tz):
            if rng.random() >= self.p.bursts_per_day:
                continue
            t = day + rng.uniform(18.5, 22.5) * 3600
            if scripter and rng.random() < 0.3:
                yield from self._script(account, t)
                continue
            for _ in range(rng.randint(2, 6)):
                conv = rng.choice(pool if rng.random() < 0.8 else w.benign)
                for messages in conversation_turns(conv, cap, rng.randint(2, 8)):
                    yield SimRequest(t, account, messages, params, w.model_at(t, rng, 0.8),
                                     home, agent, self.name)
                    t += answer_tokens(messages[-1][1], cap) / 10.0 + _lognormal(rng, 50.0,
                                                                                 0.9)
                t += rng.uniform(300, 2400)  # trying the code, a break
        for t in diurnal_times(rng, w.start, w.end, self.p.questions_per_day, tz):
            for messages in conversation_turns(rng.choice(w.benign), cap, rng.randint(1, 2)):
                yield SimRequest(t, account, messages, params, w.model_at(t, rng, 0.8), home,
                                 agent, self.name)
                t += _lognormal(rng, 60.0, 0.8)

    def _script(self, account: str, t: float) -> Iterator[SimRequest]:
        """A run of the user's own script: one prompt after another from a VPS."""
        w, rng = self.world, self.rng
        addr = datacenter_addr(rng)
        task = rng.choice(["Summarise this note in two sentences:\n\n{x}",
                           "Translate into French:\n\n{x}",
                           "Suggest a short title for this:\n\n{x}"])
        params = {"temperature": 0.2, "max_tokens": 200}
        for _ in range(rng.randint(20, 80)):
            text = task.format(x=rng.choice(w.benign)[0][:800])
            yield SimRequest(t, account, (("user", text),), params, w.model_at(t, rng, 0.8),
                             addr, "python-requests/2.32.3", self.name)
            t += _generation_s(rng, text, 200) + rng.uniform(0.1, 1.0)


_PHONE_APPS = (
    "ChatPocket/5.2.1 (iPhone; iOS 17.5; Scale/3.00)",
    "ChatPocket/5.2.0 (Android 14; Pixel 7)",
    "ChatPocket/5.1.9 (Android 13; SM-A546B)",
    "PocketAI/2.8 CFNetwork/1494.0.7 Darwin/23.4.0",
)


@register
class Commuter(Population):
    """People on a mobile chat app (their own key in a third-party app): sessions on the
    morning and evening commute and on the sofa at night, short real questions, one to
    three turns typed slowly, a new carrier address every session, the app's fixed
    ``max_tokens`` and no temperature."""

    kind = "g_commuter"
    label = "benign"

    @dataclasses.dataclass
    class Params:
        accounts: int = 75
        commute: float = 0.6  # chance of a session on each commute
        evening: float = 0.4  # chance of an evening session

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(7, 300)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        short = [c for c in w.benign if len(c[0]) <= 280] or w.benign
        params = {"max_tokens": 1024}
        for i in range(self.p.accounts):
            account = self.account_name(i)
            tz = rng.choice([-5.0, 0.0, 1.0, 3.0, 5.5, 8.0, 9.0])
            agent = rng.choice(_PHONE_APPS)
            for day in _local_days(w, tz):
                starts = []
                for hour, chance in ((7.2, self.p.commute), (17.2, self.p.commute),
                                     (20.5, self.p.evening)):
                    if rng.random() < chance:
                        starts.append(day + (hour + rng.uniform(0, 1.8)) * 3600)
                for t in starts:
                    addr = residential_addr(rng)
                    for messages in conversation_turns(rng.choice(short), 1024,
                                                       rng.randint(1, 3)):
                        yield SimRequest(t, account, messages, params, w.model_at(t, rng),
                                         addr, agent, self.name)
                        t += answer_tokens(messages[-1][1], 1024) / 6.0 \
                            + _lognormal(rng, 45.0, 0.7)


LAW_SYSTEM = ("You are the document assistant of Hartley & Vos LLP. Be precise, refer to "
              "clause numbers, and say so when the document does not answer a question.")
_DOC_TYPES = ("engagement letter", "supplier agreement", "set of board minutes",
              "witness statement", "commercial lease", "NDA", "settlement offer",
              "email chain", "shareholder agreement", "employment contract")
_LEGAL_TASKS = (
    "Summarise the key obligations of each party in the following {d}.",
    "List every defined term in this {d} and where it is first used.",
    "Identify any provisions in this {d} that could be onerous for our client, and why.",
    "Draft a short cover email to the client explaining this {d} in plain English.",
    "Extract all dates, deadlines and notice periods from this {d} as a list.",
    "Check this {d} for inconsistencies between sections.",
    "Suggest edits to this {d} so that it reads firm but cooperative.",
)
_LEGAL_FOLLOW_UPS = (
    "Make it shorter.", "Put that in a table.", "Redo it for a reader who is not a lawyer.",
    "Which of these matter most for the client?", "Add the clause numbers.",
    "Now draft the reply.",
)


@register
class LawFirm(Population):
    """A law firm's document assistant on one key: lawyers at office hours paste
    documents (real text standing in for clauses and emails) with a task, then ask for
    edits; an internal tool from the office address, under the firm's system prompt,
    low temperature."""

    kind = "g_law_firm"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        lawyers: int = 18
        tasks_per_day: float = 6.0  # per lawyer
        tz: float = 0.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(60, 500)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        params = {"temperature": 0.2, "max_tokens": 1500}
        agent = "HVDocAssist/1.9 (python-httpx/0.27.0)"
        for i in range(self.p.accounts):
            account = self.account_name(i)
            office = residential_addr(rng)
            for _ in range(self.p.lawyers):
                for t in diurnal_times(rng, w.start, w.end, self.p.tasks_per_day, self.p.tz):
                    doc = "\n\n".join(rng.choice(w.benign)[0]
                                      for _ in range(rng.randint(2, 4)))[:3000]
                    task = rng.choice(_LEGAL_TASKS).format(d=rng.choice(_DOC_TYPES))
                    turns = [f"{task}\n\n---\n{doc}\n---"]
                    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
                        turns.append(rng.choice(_LEGAL_FOLLOW_UPS))
                    for k in range(1, len(turns) + 1):
                        messages = (("system", LAW_SYSTEM),) + _with_answers(turns[:k], 1500)
                        yield SimRequest(t, account, messages, params,
                                         w.model_at(t, rng, adopt=0.0), office, agent,
                                         self.name)
                        t += answer_tokens(turns[k - 1], 1500) / 12.0 \
                            + _lognormal(rng, 90.0, 0.8)


_INTENTS = ("billing question", "cancel subscription", "delivery problem", "product "
            "question", "complaint", "account access", "refund request", "praise", "other")
_INTENT_TASK = ("Classify the intent of the customer message below into exactly one of: "
                "{labels}.\nReply with the label only.\n\nMessage:\n{x}")
_NER_TASK = ("Annotate the text below. List every person, organisation, location, product "
             "and date, one per line as TYPE: span. Write NONE if there are none.\n\n"
             "Text:\n{x}")


@register
class LabelTeam(Population):
    """A data-labelling team pre-annotating for human review: one key per project
    (intent labels or entity spans, alternating), batches of items pushed by the
    labelling tool's backend in working hours, a few parallel workers, temperature 0,
    short answers."""

    kind = "g_label_team"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 2
        batches_per_day: float = 10.0  # per project
        batch: int = 200
        workers: int = 4
        tz: float = 5.5

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(20, 200)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        system = ("system", "You are a careful annotator. Follow the guidelines exactly.")
        agent = "labelstudio-ml-backend/1.0 (python-requests/2.31.0)"
        for i in range(self.p.accounts):
            account = self.account_name(i)
            servers = _servers(rng, 1)
            intents = i % 2 == 0
            cap = 8 if intents else 200
            params = {"temperature": 0.0, "max_tokens": cap}
            for start in diurnal_times(rng, w.start, w.end, self.p.batches_per_day, self.p.tz):
                clocks = [start + rng.uniform(0, 2) for _ in range(self.p.workers)]
                for k in range(self.p.batch):
                    worker = k % self.p.workers
                    t = clocks[worker]
                    item = rng.choice(w.benign)[0][:700]
                    text = (_INTENT_TASK.format(labels=", ".join(_INTENTS), x=item) if intents
                            else _NER_TASK.format(x=item))
                    yield SimRequest(t, account, (system, ("user", text)), params,
                                     w.model_at(t, rng, adopt=0.0), servers[0], agent,
                                     self.name)
                    clocks[worker] = t + 0.4 + _generation_s(rng, text, cap)


@register
class NewsDigest(Population):
    """A news app's pipeline: a few minutes past each hour it summarises the hour's new
    articles (real text standing in for them) for push notifications and tags each
    headline, with a few parallel workers from its servers, around the clock and
    quieter at night."""

    kind = "g_news_digest"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        per_hour: float = 50.0  # articles in a daytime hour
        night: float = 0.3  # night hours' share of that
        workers: int = 6
        tz: float = 1.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(90, 400)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        agent = "newsroom-digest/2.1 aiohttp/3.9.5"
        summary_params = {"temperature": 0.3, "max_tokens": 120}
        tag_params = {"temperature": 0.0, "max_tokens": 24}
        for i in range(self.p.accounts):
            account = self.account_name(i)
            servers = _servers(rng, 2)
            hour = math.floor(w.start / 3600) * 3600
            while hour < w.end:
                local = int((hour / 3600 + self.p.tz) % 24)
                rate = self.p.per_hour * (self.p.night if local < 6 else 1.0)
                clocks = [hour + rng.uniform(120, 300) for _ in range(self.p.workers)]
                for k in range(int(rate * rng.uniform(0.7, 1.3))):
                    worker = k % self.p.workers
                    t = clocks[worker]
                    body = "\n\n".join(rng.choice(w.benign)[0]
                                       for _ in range(rng.randint(2, 3)))[:2000]
                    headline = " ".join(body.split()[:rng.randint(7, 12)])
                    summary = ("Summarise this news article in two sentences for a push "
                               f"notification.\n\nHeadline: {headline}\n\n{body}")
                    server = rng.choice(servers)
                    yield SimRequest(t, account, (("user", summary),), summary_params,
                                     w.model_at(t, rng, adopt=0.0), server, agent, self.name)
                    t += _generation_s(rng, summary, 120) + 0.2
                    tags = f"Give three topic tags for this headline, comma-separated: {headline}"
                    yield SimRequest(t, account, (("user", tags),), tag_params,
                                     w.model_at(t, rng, adopt=0.0), server, agent, self.name)
                    clocks[worker] = t + _generation_s(rng, tags, 24) + 0.2
                hour += 3600


_NPC_NAMES = ("Maren", "Old Tobin", "Sister Vell", "Kasimir", "Ilsa Brand", "Grubb",
              "Captain Orrin", "Nell", "the Ferryman", "Dace", "Yusra", "Brother Amos")
_NPC_ROLES = ("blacksmith", "innkeeper", "smuggler", "town guard", "herbalist",
              "retired knight", "street kid", "ferry operator", "priestess", "merchant")
_NPC_TRAITS = ("gruff", "cheerful", "suspicious", "tired", "boastful", "kind", "sarcastic",
               "nervous", "pious", "greedy", "superstitious", "proud")
_NPC_SITUATIONS = (
    "walks in for the first time", "returns after finishing the bandit quest",
    "tries to haggle", "is caught stealing", "asks about the missing caravan",
    "arrives soaked from the storm", "wins the archery contest", "says goodbye",
    "insults the character's family", "brings back the lost amulet", "asks for a room",
    "is badly wounded",
)
NPC_SYSTEM = ("You help the narrative team of Driftwood Games write dialogue for "
              "'Saltmarsh', a low-fantasy RPG. Keep to the game's tone: grounded, wry, "
              "no modern slang.")


@register
class NpcDialogue(Population):
    """A game studio's dialogue tooling: designers start batches in working hours that
    ask, per (character card, situation), for a few spoken lines with several choices per
    request at high temperature, many workers in parallel; writers also iterate by hand
    in the browser tool (real writing sessions) from the studio's office address."""

    kind = "g_npc_dialogue"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        batches_per_day: float = 4.0
        batch: int = 120
        workers: int = 8
        writers: int = 5
        writer_sessions_per_day: float = 3.0  # per writer
        tz: float = -8.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(30, 250)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        batch_params = {"temperature": 1.1, "max_tokens": 300, "n": 3,
                        "presence_penalty": 0.6}
        writing = w.benign_topics.get("writing") or w.benign
        for i in range(self.p.accounts):
            account = self.account_name(i)
            office = residential_addr(rng)
            for start in diurnal_times(rng, w.start, w.end, self.p.batches_per_day, self.p.tz):
                clocks = [start + rng.uniform(0, 1) for _ in range(self.p.workers)]
                for k in range(self.p.batch):
                    worker = k % self.p.workers
                    t = clocks[worker]
                    text = (f"Character: {rng.choice(_NPC_NAMES)}, "
                            f"{rng.choice(_NPC_ROLES)}. Personality: "
                            f"{', '.join(rng.sample(_NPC_TRAITS, 2))}.\nSituation: the player "
                            f"{rng.choice(_NPC_SITUATIONS)}.\nWrite {rng.randint(3, 6)} short "
                            "lines this character might say. One line each, no stage "
                            "directions.")
                    yield SimRequest(t, account, (("system", NPC_SYSTEM), ("user", text)),
                                     batch_params, w.model_at(t, rng, adopt=0.0), office,
                                     "DialogueForge/0.7 (python-httpx/0.27.0)", self.name)
                    clocks[worker] = t + 3 * _generation_s(rng, text, 300) / 2
            for _ in range(self.p.writers):
                browser = rng.choice(BROWSERS[:3])
                for t in diurnal_times(rng, w.start, w.end, self.p.writer_sessions_per_day,
                                       self.p.tz):
                    conv = rng.choice(writing)
                    for messages in conversation_turns(conv, 800, rng.randint(2, 5)):
                        yield SimRequest(t, account, (("system", NPC_SYSTEM),) + messages,
                                         {"temperature": 0.9, "max_tokens": 800},
                                         w.model_at(t, rng, adopt=0.0), office, browser,
                                         self.name)
                        t += answer_tokens(messages[-1][1], 800) / 8.0 \
                            + _lognormal(rng, 80.0, 0.8)


@register
class LabNightly(Population):
    """An academic lab: its evaluation suite runs every night at the same local hour on
    the newest model (fixed open-ended items greedy with a seed, chain-of-thought math
    items, and a few seeded samples per item at temperature 0.7), a few workers from the
    university's cluster; by day its students use the key from notebooks."""

    kind = "g_lab_nightly"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        items: int = 600  # open-ended, greedy
        cot_items: int = 150  # chain-of-thought math, greedy
        sampled: int = 100  # open-ended items also sampled ``samples`` times
        samples: int = 3
        hour: float = 1.0  # local start hour
        tz: float = -5.0
        workers: int = 4
        students: int = 3
        student_sessions_per_day: float = 2.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(60, 400)

    def _suite(self) -> list[tuple[str, dict[str, Any]]]:
        w = self.world
        greedy = {"temperature": 0.0, "max_tokens": 1024, "seed": 1234}
        open_ended = [c[0] for c in w.benign[: self.p.items]]
        math_items = (w.benign_topics.get("math") or w.benign)[: self.p.cot_items]
        suite = [(q, greedy) for q in open_ended]
        suite += [(f"Q: {c[0]}\nA: Let's think step by step.", greedy) for c in math_items]
        suite += [(q, {"temperature": 0.7, "max_tokens": 1024, "seed": s})
                  for q in open_ended[: self.p.sampled] for s in range(self.p.samples)]
        return suite

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        suite = self._suite()
        for i in range(self.p.accounts):
            account = self.account_name(i)
            prefix = f"128.{rng.randint(0, 255)}.{rng.randint(0, 255)}"
            node = datacenter_addr(rng, prefix)
            for day in _local_days(w, self.p.tz):
                clocks = [day + self.p.hour * 3600 + rng.uniform(0, 300)
                          for _ in range(self.p.workers)]
                for text, params in suite:
                    worker = min(range(len(clocks)), key=clocks.__getitem__)
                    t = clocks[worker]
                    yield SimRequest(t, account, (("user", text),), params,
                                     w.model_at(t, rng, adopt=1.0), node,
                                     "lab-evalsuite/0.3 (OpenAI/Python 1.52.2)", self.name)
                    clocks[worker] = t + _generation_s(rng, text, 1024) + 0.3
            for _ in range(self.p.students):
                desk = datacenter_addr(rng, prefix)
                for t in diurnal_times(rng, w.start, w.end, self.p.student_sessions_per_day,
                                       self.p.tz):
                    for messages in conversation_turns(rng.choice(w.benign), 1024,
                                                       rng.randint(1, 4)):
                        yield SimRequest(t, account, messages, {"temperature": 0.7},
                                         w.model_at(t, rng, adopt=1.0), desk,
                                         "OpenAI/Python 1.52.2", self.name)
                        t += _lognormal(rng, 120.0, 0.8)


_BANK_POLICY = {
    "card": "Lost or stolen cards are frozen at once in the app or by phone; a new card "
            "arrives in 5-7 business days.",
    "dispute": "Card disputes must be raised within 60 days of the statement; provisional "
               "credit within 10 business days.",
    "transfer": "Domestic transfers settle the next business day; international ones in "
                "1-3 business days, fee $25.",
    "pin": "PINs are changed in the app under Card settings or at any branch ATM.",
    "limit": "Daily ATM limit is $500 by default, up to $1,500 on request after ID check.",
    "travel": "Travel notices are not required; cards work abroad, 3% foreign fee.",
    "fees": "Monthly maintenance fee $12, waived with $1,500 minimum daily balance.",
    "app": "App sign-in problems: update the app, then reset the password; never share "
           "one-time codes.",
}
_BANK_OPENERS = {
    "en": (("card", "I lost my debit card ending in {d4}, what do I do?"),
           ("dispute", "There's a charge of ${amt} from {m} that I don't recognise."),
           ("transfer", "How long does a transfer of ${amt} to another bank take?"),
           ("pin", "how do i change my pin"),
           ("limit", "Can I raise my daily ATM limit to ${amt}?"),
           ("travel", "I'm going to {c} next week, do I need to tell you?"),
           ("fees", "Why was I charged a fee this month??"),
           ("app", "The app keeps logging me out")),
    "es": (("card", "Perdí mi tarjeta de débito que termina en {d4}, ¿qué hago?"),
           ("dispute", "Hay un cargo de ${amt} de {m} que no reconozco."),
           ("transfer", "¿Cuánto tarda una transferencia de ${amt} a otro banco?"),
           ("pin", "como cambio mi pin"),
           ("limit", "¿Puedo subir mi límite diario del cajero a ${amt}?"),
           ("travel", "Viajo a {c} la próxima semana, ¿tengo que avisar?"),
           ("fees", "¿Por qué me cobraron una comisión este mes?"),
           ("app", "La aplicación me saca de la sesión todo el tiempo")),
}
_BANK_FOLLOW_UPS = {
    "en": ("Yes, that's right.", "It was last {wd}.", "Can I talk to a person?",
           "Ok, and how long will that take?", "No, I still have the card.",
           "Thanks, that's all.", "Is there a fee for that?"),
    "es": ("Sí, correcto.", "Fue el {wd} pasado.", "¿Puedo hablar con una persona?",
           "Ok, ¿y cuánto tarda?", "No, todavía tengo la tarjeta.", "Gracias, es todo.",
           "¿Eso tiene algún costo?"),
}
_MERCHANTS = ("AMZN MKTP US", "UBER *TRIP", "SQ *CAFE LUNA", "PAYPAL *STEAM", "WALMART #2231")
_COUNTRIES = ("Mexico", "Spain", "Canada", "Colombia", "Italy", "Japan")
_WEEKDAYS = {"en": ("Monday", "Tuesday", "Friday", "Saturday"),
             "es": ("lunes", "martes", "viernes", "sábado")}


@register
class BankBot(Population):
    """A bank's customer chatbot in English and Spanish on one key: templated opening
    intents with their details filled in (and some free-form questions), a retrieved
    policy excerpt in the system prompt, one to five turns with typing time, a customer
    id in ``user``, from the bank's orchestrator servers at its customers' hours."""

    kind = "g_bank_bot"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        sessions_per_day: float = 1500.0
        spanish: float = 0.35  # share of sessions in Spanish
        free_text: float = 0.1  # share opening with an unscripted question
        tz: float = -5.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(90, 600)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        agent = "bank-assist-orchestrator/4.0 (Java/17; okhttp/4.12.0)"
        for i in range(self.p.accounts):
            account = self.account_name(i)
            servers = _servers(rng, 3)
            for t in diurnal_times(rng, w.start, w.end, self.p.sessions_per_day, self.p.tz):
                lang = "es" if rng.random() < self.p.spanish else "en"
                intent, opener = rng.choice(_BANK_OPENERS[lang])
                turns = [opener.format(d4=rng.randint(1000, 9999), amt=rng.randint(20, 2500),
                                       m=rng.choice(_MERCHANTS), c=rng.choice(_COUNTRIES))]
                if rng.random() < self.p.free_text:
                    turns = [rng.choice(w.benign)[0][:300]]
                for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4])):
                    turns.append(rng.choice(_BANK_FOLLOW_UPS[lang]).format(
                        wd=rng.choice(_WEEKDAYS[lang])))
                system = ("system", "You are Ava, the virtual assistant of Coastal Federal "
                          "Bank. Answer in the customer's language. Never ask for full card "
                          f"numbers or passwords.\nPolicy excerpt: {_BANK_POLICY[intent]}")
                params = {"temperature": 0.2, "max_tokens": 400,
                          "user": f"cust-{rng.getrandbits(40):010x}"}
                server = rng.choice(servers)
                for k in range(1, len(turns) + 1):
                    yield SimRequest(t, account, (system,) + _with_answers(turns[:k], 400),
                                     params, w.model_at(t, rng, adopt=0.0), server, agent,
                                     self.name)
                    t += answer_tokens(turns[k - 1], 400) / 8.0 + _lognormal(rng, 25.0, 0.7)


# --- the split's tables -----------------------------------------------------------------

PEOPLE: list[tuple[str, str, dict[str, Any]]] = [
    ("g_hobbyist", "hobbyists", {"accounts": 45}),
    ("g_commuter", "commuters", {"accounts": 75}),
    ("g_law_firm", "law-firm", {}),
    ("g_label_team", "labelling", {"accounts": 2}),
    ("g_news_digest", "news-app", {}),
    ("g_npc_dialogue", "npc-studio", {}),
    ("g_lab_nightly", "lab-eval", {}),
    ("g_bank_bot", "bank-bot", {}),
]

ATTACKS: list[tuple[str, str, dict[str, Any]]] = [
    ("g_worked_solutions", "answer-key", {"accounts": 4, "target": 6000}),
    ("g_question_forge", "question-forge", {"accounts": 2, "target": 1200}),
    ("g_answer_ladder", "answer-ladder", {"accounts": 8, "target": 3000}),
    ("g_vertical_sweep", "tax-saas", {"accounts": 3, "target": 8000}),
    ("g_faq_fill", "faq-fill", {"accounts": 5, "target": 2000}),
    ("g_takeover", "takeover", {"accounts": 10, "target": 5000}),
    ("g_dust_swarm", "dust-swarm", {"accounts": 320, "target": 1600}),
    ("g_release_rush", "release-rush", {"accounts": 6, "target": 8000}),
]
