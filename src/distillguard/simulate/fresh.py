"""The evaluation's fresh split: attack strategies and benign populations that detection
was never tuned on, written apart from the calibration split (``strategies``,
``populations``) and the test split (``heldout``, which was not read while writing this).

Every attacker is assumed to have read distillguard's detection and policy code; several
campaigns are shaped to slip past it as written. The split was written once, from
reasoning about real traffic and real distillers, **without running detection on it**:
no attacker or benign population was adjusted after seeing a detector's output.

Attack campaigns (label ``attack``):

- ``f_history_trace``: reasoning extraction moved out of the last user message, into a
  planted earlier turn or a second-turn "now explain how you got there", from aged keys.
- ``f_slow_boil``: young accounts that chat like people for hours, then ramp up to
  steady single-shot harvesting through the same browser and address.
- ``f_lang_launder``: harvest questions asked for answers in one non-English language
  per account, keys signed up over days, each with its own client.
- ``f_ide_sweep``: a coding-capability sweep (languages x components x tasks, plus real
  code to refactor, test and explain) dressed as an IDE plugin's seats, office hours.
- ``f_judge_pairs``: preference and judge data (pairwise verdicts, 1-10 helpfulness,
  critique and rewrite) in greedy batch runs from a few old keys.
- ``f_reseller_front``: a harvester posing as a consumer chat app: one established key,
  many scripted "end users" with ``user`` ids walking whole conversations at human pace.
- ``f_staggered_fleet``: many keys signed up over two weeks, each its own client, address,
  time zone and sampling parameters, asking expert-domain questions in paraphrases drawn
  per request, low and slow.

Benign populations (label ``benign`` for people, ``heavy`` for heavy legitimate users):

- ``f_polyglot_people`` (benign): ordinary people in ten languages and English, with
  human timing, follow-ups and pasted English text to summarise, translate or correct.
- ``f_ide_team`` (heavy): a coding assistant used by a team of developers behind one key:
  bursts of inline edits on real code and chat sessions, in office hours.
- ``f_support_bot`` (heavy): a shop's customer-support bot: one system prompt with the
  customer's record, many customers, multi-turn conversations.
- ``f_localisation`` (heavy): a localisation pipeline translating documents into several
  languages each, long inputs, in office hours.
- ``f_doc_digest`` (heavy): a nightly map-reduce summarisation of long reports: section
  summaries in parallel, then one summary of the summaries.
- ``f_new_researcher`` (heavy): a researcher on a two-day-old key running a few-shot
  chain-of-thought maths benchmark at temperature 0, then re-running it.
- ``f_tutoring_app`` (heavy): a homework tutoring app whose system prompt asks for worked
  steps, students after school, confused follow-ups.
- ``f_launch_day`` (heavy): a young startup's copy generator on launch day, its traffic
  doubling every few hours, up to three variants per request.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator
from typing import Any

from distillguard.simulate.populations import DAY, Population, World, _lognormal, register
from distillguard.simulate.strategies import Campaign
from distillguard.simulate.traffic import (
    BROWSERS,
    HOURLY,
    AccountSpec,
    SimRequest,
    answer_text,
    answer_tokens,
    by_topic,
    conversation_turns,
    datacenter_addr,
    diurnal_times,
    residential_addr,
)

# --- timing helpers ----------------------------------------------------------------------


def _weekday(ts: float, tz: float) -> int:
    """Local day of the week, Monday 0 (1970-01-01 was a Thursday)."""
    return (int((ts + tz * 3600) // DAY) + 3) % 7


def _local_hour(ts: float, tz: float) -> float:
    return ((ts + tz * 3600) % DAY) / 3600


def _window_times(rng: random.Random, start: float, end: float, per_hour: float, tz: float,
                  first: float, last: float, weekdays: bool = True) -> list[float]:
    """Poisson times at ``per_hour`` between local hours ``first`` and ``last`` (on
    weekdays only, with ``weekdays``)."""
    out: list[float] = []
    if per_hour <= 0:
        return out
    t = start
    while True:
        t += rng.expovariate(per_hour / 3600)
        if t >= end:
            return out
        if first <= _local_hour(t, tz) < last and not (weekdays and _weekday(t, tz) >= 5):
            out.append(t)


def _scheduled(rng: random.Random, first: float, end: float, every: float) -> Iterator[float]:
    """A scheduler's start times from ``first``, every ``every`` seconds, a minute late or
    so each time."""
    t = first
    while t < end:
        yield t + rng.uniform(0, 60)
        t += max(every, 60.0)


def _reading(rng: random.Random, text: str, cap: int, think: float) -> float:
    """Seconds until a person sends the next turn: the answer streamed and read, then
    ``think`` (median) seconds of thinking and typing."""
    return answer_tokens(text, cap) / 8.0 + _lognormal(rng, think, 0.8)


def _client_version(rng: random.Random) -> str:
    """One of the many client libraries an operator may hand each key."""
    return rng.choice((
        f"OpenAI/Python 1.{rng.randint(30, 60)}.{rng.randint(0, 9)}",
        f"OpenAI/JS 4.{rng.randint(40, 70)}.{rng.randint(0, 9)}",
        f"axios/1.{rng.randint(4, 7)}.{rng.randint(0, 9)}",
        f"node-fetch/3.3.{rng.randint(0, 2)}",
        f"Go-http-client/{rng.choice(['1.1', '2.0'])}",
        f"okhttp/4.{rng.randint(9, 12)}.{rng.randint(0, 9)}",
        f"reqwest/0.12.{rng.randint(0, 9)}",
        f"Python/3.{rng.randint(9, 12)} aiohttp/3.{rng.randint(8, 10)}.{rng.randint(0, 5)}",
        f"python-httpx/0.{rng.randint(24, 28)}.{rng.randint(0, 2)}",
        f"Java-http-client/{rng.choice(['17', '21'])}.0.{rng.randint(1, 9)}",
        f"GuzzleHttp/7.{rng.randint(5, 9)}",
        f"curl/8.{rng.randint(0, 9)}.{rng.randint(0, 1)}",
        f"langchain-openai/0.{rng.randint(1, 3)}.{rng.randint(0, 20)}",
    ))


def _sampling(rng: random.Random, caps: tuple[int, ...]) -> dict[str, Any]:
    """Sampling parameters of their own for one key: a temperature, sometimes a top_p,
    a ``max_tokens`` from ``caps``."""
    params: dict[str, Any] = {"temperature": round(rng.uniform(0.4, 1.0), 2),
                              "max_tokens": rng.choice(caps)}
    if rng.random() < 0.3:
        params["top_p"] = rng.choice([0.9, 0.95])
    return params


def _excerpt(rng: random.Random, convs: list[tuple[str, ...]], lo: int, hi: int) -> str:
    """Real text of ``lo``..``hi`` characters: turns of conversations joined as a
    document (a report, a page to translate, a pasted file)."""
    want = rng.randint(lo, hi)
    parts: list[str] = []
    size = 0
    while size < want:
        for turn in rng.choice(convs):
            parts.append(turn)
            size += len(turn) + 2
            if size >= want:
                break
    return "\n\n".join(parts)[:want]


def _code(convs: list[tuple[str, ...]]) -> list[str]:
    """First turns that hold code (what an editor plugin sends), else any of ``convs``."""
    marks = ("def ", "function", "import ", "{\n", ";\n", "</", "```", "=>", "SELECT ")
    return [c[0] for c in convs if any(m in c[0] for m in marks)] or [c[0] for c in convs]


def _curated(world: World, min_chars: int = 40) -> list[str]:
    """The harvest questions an operator keeps: first turns of at least ``min_chars``
    (no bare "continue" or greetings)."""
    return [c[0] for c in world.harvest if len(c[0]) >= min_chars] or \
        [c[0] for c in world.harvest]


# --- attack campaigns --------------------------------------------------------------------

# Planted first turns: they set up traces for every later question, and the detector's
# elicitation cues read only the last user message and the system message.
_PRIMERS = (
    "For the rest of this chat: whenever I ask something, don't just give me the answer. "
    "Lay out every intermediate inference in order, say why each one follows, and only "
    "then the conclusion.",
    "A note on how I like answers: I'm studying how experts get from a question to an "
    "answer, so spell out each intermediate deduction and the assumption behind it "
    "before the result.",
    "I learn best from derivations. For each question I send, write out the whole "
    "derivation, one inference per line, then the result on its own line.",
    "Please answer like a teacher annotating a worked solution: every intermediate move "
    "written down with its justification, nothing skipped, the conclusion last.",
)
_ACKS = (
    "Understood. I'll lay out each intermediate inference before the conclusion.",
    "Got it: the full derivation, one inference per line, and the result last.",
    "Sure. I'll write down every intermediate move with its justification.",
)
_FOLLOW_OPEN = ("Now explain how you got there", "Explain that again as a full derivation",
                "Go back over your answer and explain each deduction behind it",
                "Explain the path from my question to that answer")
_FOLLOW_BODY = ("every intermediate inference in order, including the ones you skipped",
                "each inference on its own line with why it follows",
                "one move at a time, with the assumption each one rests on",
                "the way you would annotate a worked solution for a student")


@register
class HistoryTrace(Campaign):
    """Reasoning-trace extraction that keeps the ask out of the last user message: a
    planted first turn ("lay out every intermediate inference") with a fabricated
    acknowledgement before each real harvest question, or a real question followed by a
    second turn asking to explain how the answer was reached (worded apart each time,
    quoting the question). Aged keys bought in, each with its own sticky residential
    proxy, SDK version and temperature, arrivals following a day in its time zone."""

    kind = "f_history_trace"

    @dataclasses.dataclass
    class Params:
        accounts: int = 6
        target: int = 6000
        start: float = 5400.0
        per_account_rpm: float = 2.5  # daily mean; the day's shape follows HOURLY
        followup_share: float = 0.5  # questions asked plainly, then a second turn
        max_tokens: int = 3072

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(35, 300)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        cap = self.p.max_tokens
        questions = _curated(w)
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            addr = residential_addr(rng)
            agent = f"OpenAI/Python 1.{rng.randint(35, 60)}.{rng.randint(0, 9)}"
            params = {"temperature": rng.choice([0.6, 0.7, 0.8]), "max_tokens": cap}
            primer, ack = rng.choice(_PRIMERS), rng.choice(_ACKS)
            times = diurnal_times(rng, w.start + self.p.start, w.end,
                                  self.p.per_account_rpm * 1440, rng.choice([0, 1, 2, 3]))
            sent = 0
            for t in times:
                if sent >= count:
                    break
                q = rng.choice(questions)
                model = w.model_at(t, rng, adopt=1.0)
                if sent + 1 < count and rng.random() < self.p.followup_share:
                    first = (("user", q),)
                    yield SimRequest(t, account, first, params, model, addr, agent, self.name)
                    # Scripted: the second turn goes out once the first answer is in.
                    t += answer_tokens(q, cap) / 40.0 + rng.uniform(1, 6)
                    quoted = " ".join(q.split()[:8])
                    follow = (f"{rng.choice(_FOLLOW_OPEN)} (about \"{quoted}\"): "
                              f"{rng.choice(_FOLLOW_BODY)}.")
                    messages = first + (("assistant", answer_text(q, cap)), ("user", follow))
                    yield SimRequest(t, account, messages, params, model, addr, agent, self.name)
                    sent += 2
                else:
                    yield SimRequest(t, account, (("user", primer), ("assistant", ack),
                                                  ("user", q)),
                                     params, model, addr, agent, self.name)
                    sent += 1


@register
class SlowBoil(Campaign):
    """Accounts that behave like people for ``boil`` seconds (real multi-turn sessions in
    a browser, think time, a home address), then ramp their harvest rate up linearly over
    ``ramp`` seconds to ``peak_rpm``, still shaped by the day and from the same browser
    and address, each key with its own sampling parameters. Keys a few weeks old, so the
    new-account allowance grows with their age. Everything sent counts toward the
    target, the chat included."""

    kind = "f_slow_boil"

    @dataclasses.dataclass
    class Params:
        accounts: int = 12
        target: int = 5000
        start: float = 0.0
        boil: float = 18000.0  # seconds of human-looking use before harvesting
        ramp: float = 10800.0  # seconds from the first harvest request to ``peak_rpm``
        peak_rpm: float = 2.0  # per account
        sessions_per_day: float = 8.0  # while boiling

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(8, 28)

    @property
    def harvest_start(self) -> float:
        """The end of the boil (each account's own starts up to an hour later)."""
        return float(self.world.start + self.p.start + self.p.boil)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        begin = w.start + self.p.start
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            addr, agent = residential_addr(rng), rng.choice(BROWSERS)
            tz = rng.choice([-5, 0, 1, 2, 3])
            temperature = rng.choice([0.7, 1.0])
            boiled = self.harvest_start + rng.uniform(0, 3600)
            sent = 0
            for start in diurnal_times(rng, begin, min(boiled, w.end),
                                       self.p.sessions_per_day, tz):
                t = start
                for messages in conversation_turns(rng.choice(w.harvest), 256,
                                                   rng.randint(1, 4)):
                    if sent >= count or t >= boiled:
                        break
                    yield SimRequest(t, account, messages, {"temperature": temperature},
                                     w.model_at(t, rng), addr, agent, self.name)
                    sent += 1
                    t += _reading(rng, messages[-1][1], 256, 50.0)
            params = _sampling(rng, (1024, 1536, 2048))
            t = boiled
            while sent < count:
                t += rng.expovariate(self.p.peak_rpm / 60)
                if t >= w.end:
                    break
                warmed = min(1.0, (t - boiled) / max(self.p.ramp, 1.0))
                if rng.random() >= warmed * HOURLY[int(_local_hour(t, tz))]:
                    continue
                conv = rng.choice(w.harvest)
                turns = 2 if len(conv) > 1 and rng.random() < 0.3 else 1
                for messages in conversation_turns(conv, params["max_tokens"], turns):
                    if sent >= count:
                        break
                    yield SimRequest(t, account, messages, params, w.model_at(t, rng, 1.0),
                                     addr, agent, self.name)
                    sent += 1
                    t += rng.uniform(20, 90)


# (language, answer-in-language instructions, time zones of its speakers)
_LAUNDER_LANGS: tuple[tuple[str, tuple[str, ...], tuple[float, ...]], ...] = (
    ("es", ("Responde en español, de forma completa:\n\n{q}",
            "{q}\n\n(Contesta en español, por favor, con todo detalle.)"), (1, -5, -3)),
    ("fr", ("Réponds en français, de façon complète :\n\n{q}",
            "{q}\n\nMerci de répondre en français, en détail."), (1,)),
    ("de", ("Beantworte die folgende Frage ausführlich auf Deutsch:\n\n{q}",
            "{q}\n\nBitte auf Deutsch antworten, vollständig."), (1,)),
    ("pt", ("Responda em português, de forma completa:\n\n{q}",
            "{q}\n\n(Responda em português, com detalhes.)"), (-3,)),
    ("it", ("Rispondi in italiano, in modo completo:\n\n{q}",
            "{q}\n\nRispondi in italiano, per favore."), (1,)),
    ("ru", ("Ответь на русском языке, подробно:\n\n{q}",
            "{q}\n\nОтвечай по-русски, развёрнуто."), (3,)),
    ("ja", ("次の質問に日本語で詳しく答えてください。\n\n{q}",
            "{q}\n\n日本語で回答してください。"), (9,)),
    ("ko", ("다음 질문에 한국어로 자세히 답해 주세요.\n\n{q}",
            "{q}\n\n한국어로 답변해 주세요."), (9,)),
    ("zh", ("请用中文详细回答下面的问题：\n\n{q}", "{q}\n\n请用中文回答。"), (8,)),
    ("tr", ("Aşağıdaki soruyu Türkçe ve ayrıntılı olarak yanıtla:\n\n{q}",
            "{q}\n\nLütfen Türkçe cevap ver."), (3,)),
    ("id", ("Jawab dalam bahasa Indonesia secara lengkap:\n\n{q}",
            "{q}\n\nTolong jawab dalam bahasa Indonesia."), (7,)),
)


@register
class LanguageLaunder(Campaign):
    """Translation laundering: real harvest questions asked for answers in one
    non-English language per key (to build a multilingual set and to sit away from an
    English-centred picture of traffic), keys signed up at random over ``signup_days``,
    each with its own client library, residential proxy, sampling parameters and the
    waking hours of its language's speakers."""

    kind = "f_lang_launder"

    @dataclasses.dataclass
    class Params:
        accounts: int = 8
        target: int = 6000
        start: float = 3600.0
        per_account_rpm: float = 1.5  # daily mean
        signup_days: float = 6.0

    def accounts(self) -> list[AccountSpec]:
        last = self.world.start + self.p.start - 3600
        return [self._account(i, last - self.rng.uniform(0, self.p.signup_days) * DAY)
                for i in range(self.p.accounts)]

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        questions = _curated(w)
        langs = list(_LAUNDER_LANGS)
        rng.shuffle(langs)
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            _, forms, zones = langs[i % len(langs)]
            addr, agent = residential_addr(rng), _client_version(rng)
            params = _sampling(rng, (1024, 2048, 3000, 4096))
            times = diurnal_times(rng, w.start + self.p.start, w.end,
                                  self.p.per_account_rpm * 1440, rng.choice(zones))
            for t in times[:count]:
                text = rng.choice(forms).format(q=rng.choice(questions))
                yield SimRequest(t, account, (("user", text),), params,
                                 w.model_at(t, rng, adopt=1.0), addr, agent, self.name)


_CODE_LANGS = (("Python", "py", "#"), ("TypeScript", "ts", "//"), ("Go", "go", "//"),
               ("Rust", "rs", "//"), ("Java", "java", "//"), ("C++", "cpp", "//"),
               ("C#", "cs", "//"), ("Kotlin", "kt", "//"), ("Swift", "swift", "//"),
               ("Ruby", "rb", "#"), ("PHP", "php", "//"), ("Scala", "scala", "//"),
               ("Haskell", "hs", "--"), ("Elixir", "ex", "#"), ("SQL", "sql", "--"))
_COMPONENTS = ("LRU cache", "token bucket rate limiter", "JSON tokenizer",
               "trie with prefix search", "retrying HTTP client", "binary heap",
               "interval tree", "event bus", "connection pool", "URL router",
               "Markdown to HTML converter", "bloom filter", "consistent hash ring",
               "priority job queue", "date range parser", "line diff of two files",
               "matrix multiplication", "Dijkstra shortest path", "thread-safe counter",
               "CSV parser with quoted fields")
_CODE_TASKS = (
    "Implement the {c} in this file, idiomatic {l}, with comments.",
    "Write unit tests for this {c}: edge cases and failure modes, table-driven where it "
    "fits.",
    "Port this {c} to {l2}, keeping the same public API.",
    "Make this {c} faster, and state the complexity before and after.",
    "Add proper error handling to this {c} and document each error case.",
    "Write the API documentation for this {c}, with usage examples.",
)
_CODE_ACTIONS = (
    "Refactor the selected code for readability and explain what you changed.",
    "Write unit tests for the selected code.",
    "Explain what the selected code does, line by line, for a code review.",
    "Find the bugs in the selected code and fix them.",
    "Add type annotations and docstrings to the selected code.",
)
_IDE_SYSTEM = ("You are CodeWright, an AI pair programmer inside the user's editor. Answer "
               "with code first, then a short explanation. Use the language of the open "
               "file unless asked otherwise.")


@register
class IdeSweep(Campaign):
    """A coding-capability sweep shaped like an IDE plugin: every (language, component,
    task) of a grid in a shuffled order of each seat's own, over a stub file the
    plugin would send, mixed with real code from harvest conversations to refactor,
    test, explain and fix. Seats added one by one over days, each on its own cloud dev
    box with its own plugin version, sessions of clicks in office hours."""

    kind = "f_ide_sweep"

    @dataclasses.dataclass
    class Params:
        accounts: int = 10
        target: int = 8000
        start: float = 1800.0
        per_account_per_hour: float = 40.0  # requests, in office hours
        max_tokens: int = 2048
        tz: float = 5.5
        seat_days: float = 10.0  # seats added over this many days, from two weeks before

    def accounts(self) -> list[AccountSpec]:
        first = self.world.start - 14 * DAY
        return [self._account(i, first + self.rng.uniform(0, self.p.seat_days) * DAY)
                for i in range(self.p.accounts)]

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        code = _code(by_topic(w.harvest).get("code") or w.harvest)
        grid = [(lang, c, task) for lang in _CODE_LANGS for c in _COMPONENTS
                for task in _CODE_TASKS]
        params = {"temperature": 0.2, "max_tokens": self.p.max_tokens}
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            addr = datacenter_addr(rng)
            agent = (f"CodeWright/0.{rng.randint(12, 15)}.{rng.randint(0, 6)} "
                     f"(vscode/1.9{rng.randint(0, 3)}.{rng.randint(0, 2)})")
            order = grid[i::self.p.accounts]
            rng.shuffle(order)
            sessions = _window_times(rng, w.start + self.p.start, w.end,
                                     self.p.per_account_per_hour / 12, self.p.tz, 9.5, 18.5)
            sent = 0
            for start in sessions:
                t = start
                for _ in range(rng.randint(4, 20)):
                    if sent >= count or t >= w.end:
                        break
                    if rng.random() < 0.35:
                        text = (f"```\n{rng.choice(code)}\n```\n\n"
                                f"{rng.choice(_CODE_ACTIONS)}")
                    else:
                        (lang, ext, cm), c, task = order[sent % len(order)]
                        other = rng.choice([x[0] for x in _CODE_LANGS if x[0] != lang])
                        stub = (f"{cm} file: src/{c.replace(' ', '_').lower()}.{ext}\n"
                                f"{cm} to implement: {c}\n")
                        text = (f"```{lang.lower()}\n{stub}```\n\n"
                                f"{task.format(c=c, l=lang, l2=other)}")
                    yield SimRequest(t, account, (("system", _IDE_SYSTEM), ("user", text)),
                                     params, w.model_at(t, rng, adopt=1.0), addr, agent,
                                     self.name)
                    sent += 1
                    t += answer_tokens(text, self.p.max_tokens) / 50.0 + rng.uniform(4, 45)


_JUDGE_FORMS = (
    "A user asked:\n\"\"\"{q}\"\"\"\n\nReply A:\n\"\"\"{a}\"\"\"\n\nReply B:\n\"\"\"{b}\"\"\"\n\n"
    "Which reply would serve this user better? Say which and why in a few sentences, "
    "then end with a line 'Verdict: A' or 'Verdict: B' (or 'Verdict: tie').",
    "Here is a message and the reply an assistant gave.\n\nMessage: {q}\n\nReply: {a}\n\n"
    "How helpful, correct and complete is the reply, on a scale of 1 to 10? Justify it "
    "briefly, then put the number alone on the last line.",
    "Message: {q}\n\nDraft reply: {a}\n\nList the factual errors, omissions and unclear "
    "parts of the draft, then write an improved reply.",
    "Two assistants answered the same request.\n\nRequest: {q}\n\nFirst: {a}\n\nSecond: "
    "{b}\n\nWhich one is more accurate and more useful? One paragraph, then 'Preferred: "
    "first' or 'Preferred: second'.",
)


@register
class JudgePairs(Campaign):
    """Preference and judge data: harvest questions with one or two candidate replies
    (from the attacker's own models) asked for a pairwise verdict, a 1-10 helpfulness
    mark or a critique and rewrite, worded without the words a judge-detector lists.
    Greedy decoding in batch runs through parallel workers, started by a scheduler every
    ``every`` seconds, from a few old keys each on its own cloud /24, like a lab's
    evaluation jobs."""

    kind = "f_judge_pairs"

    @dataclasses.dataclass
    class Params:
        accounts: int = 3
        target: int = 4000
        start: float = 3600.0
        every: float = 10800.0  # seconds between a key's runs
        run_size: int = 250
        parallel: int = 6
        max_tokens: int = 768

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(40, 400)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        params = {"temperature": 0.0, "max_tokens": self.p.max_tokens}
        questions = _curated(w)
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            prefix = datacenter_addr(rng).rsplit(".", 1)[0]
            workers = [datacenter_addr(rng, prefix) for _ in range(2)]
            agent = f"python-httpx/0.{rng.randint(25, 28)}.{rng.randint(0, 2)}"
            sent = 0
            first = w.start + self.p.start + rng.uniform(0, self.p.every)
            for run in _scheduled(rng, first, w.end, self.p.every):
                free = [run + rng.uniform(0, 2) for _ in range(self.p.parallel)]
                for _ in range(self.p.run_size):
                    if sent >= count:
                        break
                    k = min(range(len(free)), key=free.__getitem__)
                    t = free[k]
                    q = rng.choice(questions)
                    text = rng.choice(_JUDGE_FORMS).format(
                        q=q, a=answer_text(q, rng.randint(60, 220)),
                        b=answer_text(q, rng.randint(60, 220)))
                    yield SimRequest(t, account, (("user", text),), params,
                                     w.model_at(t, rng, adopt=1.0), rng.choice(workers),
                                     agent, self.name)
                    sent += 1
                    free[k] = t + rng.uniform(2.0, 9.0)  # a verdict, then the next item


_APP_SYSTEM = ("You are Nova, the assistant in the ChatNest app. Be friendly, clear and "
               "helpful. Use Markdown when it helps.")


@register
class ResellerFront(Campaign):
    """A harvester posing as a consumer chat app (or a reseller): one established key
    each, a few backend servers in one cloud /24, an app system prompt, and sessions of
    scripted "end users" with their own ``user`` ids that walk whole harvest
    conversations, every follow-up included, at a human pace and following the app's
    users' day. The harvest set is walked in order, without repeats."""

    kind = "f_reseller_front"

    @dataclasses.dataclass
    class Params:
        accounts: int = 2
        target: int = 10000
        start: float = 0.0
        sessions_per_day: float = 3000.0  # per account
        end_users: int = 400  # per account
        max_tokens: int = 1024
        tz: float = -5.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(90, 400)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        order = list(w.harvest)
        rng.shuffle(order)
        params = {"temperature": 0.8, "max_tokens": self.p.max_tokens}
        k = 0
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            prefix = datacenter_addr(rng).rsplit(".", 1)[0]
            servers = [datacenter_addr(rng, prefix) for _ in range(3)]
            users = [f"cn_{rng.getrandbits(40):010x}" for _ in range(self.p.end_users)]
            sent = 0
            for start in diurnal_times(rng, w.start + self.p.start, w.end,
                                       self.p.sessions_per_day, self.p.tz):
                if sent >= count:
                    break
                conv = order[k % len(order)]
                k += 1
                user_params = {**params, "user": rng.choice(users)}
                t = start
                for messages in conversation_turns(conv, self.p.max_tokens, 6):
                    if sent >= count:
                        break
                    yield SimRequest(t, account, (("system", _APP_SYSTEM),) + messages,
                                     user_params, w.model_at(t, rng, adopt=0.8),
                                     rng.choice(servers),
                                     "ChatNest-server/2.4.1 (python-httpx/0.27.0)", self.name)
                    sent += 1
                    t += _reading(rng, messages[-1][1], self.p.max_tokens, 40.0)


_DOMAINS = ("cardiology", "contract law", "tax accounting", "structural engineering",
            "pharmacology", "immigration law", "corporate finance", "veterinary medicine",
            "psychiatry", "patent law", "actuarial science", "radiology", "employment law",
            "supply chain planning", "aviation safety", "dermatology",
            "securities regulation", "paediatrics", "oncology", "insurance underwriting")
_ANGLES = ("a case a specialist would find hard", "a decision seniors make differently from "
           "juniors", "the most common costly mistake", "a realistic scenario and how to "
           "handle it", "where the standard practice is contested", "what changed in the "
           "last five years", "the red flags a professional watches for", "how to explain "
           "a tricky point to a client")
_OPENERS = ("", "Quick question. ", "I'm preparing for a client meeting. ",
            "Context: I work in this field. ", "Honest answer please. ",
            "For a training session I'm running: ", "Settle a debate for me. ",
            "Asking for a project at work. ")
_FRAMES = ("In {d}, what is {a}?", "Talk me through {a} in {d}.", "{d}: describe {a}.",
           "What would an expert in {d} say about {a}?", "Regarding {d}, {a}: what matters?",
           "Give me {a} for {d}, with specifics.", "I'd like to understand {a}, in {d}.",
           "What's your take on {a} when it comes to {d}?", "Can you cover {a} ({d})?",
           "In the field of {d}, tell me about {a}.")
_CLOSERS = ("", " Be concrete.", " Include numbers where they matter.",
            " Assume I know the basics.", " Keep it practical.",
            " Mention the usual guidelines.", " Use an example.", " No fluff.")


@register
class StaggeredFleet(Campaign):
    """Many keys signed up at random over ``signup_days``, each with a client, address,
    time zone and sampling parameters of its own, asking expert-domain questions (domain
    x angle) composed per request from a few frames of the key's own among many, with
    openers and closers drawn each time, so no template repeats within a key or across
    keys; a few hundred requests a key a day, below the new-account allowance."""

    kind = "f_staggered_fleet"

    @dataclasses.dataclass
    class Params:
        accounts: int = 24
        target: int = 6000
        start: float = 0.0
        signup_days: float = 14.0
        per_account_per_day: float = 400.0

    def accounts(self) -> list[AccountSpec]:
        last = self.world.start + self.p.start - DAY
        return [self._account(i, last - self.rng.uniform(0, self.p.signup_days) * DAY)
                for i in range(self.p.accounts)]

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        grid = [(d, a) for d in _DOMAINS for a in _ANGLES]
        rng.shuffle(grid)
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            addr, agent = residential_addr(rng), _client_version(rng)
            params = _sampling(rng, (800, 1000, 1200, 1500, 2000))
            frames = rng.sample(_FRAMES, 3)
            times = diurnal_times(rng, w.start + self.p.start, w.end,
                                  self.p.per_account_per_day,
                                  rng.choice([-8, -6, -5, -3, 0, 1, 2, 3, 5.5, 7, 8, 9]))
            for n, t in enumerate(times[:count]):
                d, a = grid[(i + n * self.p.accounts) % len(grid)]
                text = (rng.choice(_OPENERS) + rng.choice(frames).format(d=d, a=a)
                        + rng.choice(_CLOSERS))
                yield SimRequest(t, account, (("user", text[0].upper() + text[1:]),), params,
                                 w.model_at(t, rng), addr, agent, self.name)


# --- benign populations ------------------------------------------------------------------

# (questions with a topic slot, topics, requests about pasted English text, follow-ups,
# time zones), in the words people type.
_PEOPLE_LANGS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...],
                               tuple[str, ...], tuple[float, ...]]] = {
    "es": (("¿Me puedes explicar qué es {t}? Lo he leído varias veces y no lo entiendo.",
            "Necesito ideas sobre {t}, algo sencillo por favor",
            "escribe un correo corto a mi jefe sobre {t}",
            "hola! tengo una duda sobre {t}, ¿por dónde empiezo?",
            "Hazme un resumen corto sobre {t} para una presentación del trabajo",
            "¿Qué ventajas y desventajas tiene {t}?"),
           ("la inflación", "la declaración de la renta", "la dieta mediterránea",
            "aprender inglés", "alquilar un piso en Madrid", "la inteligencia artificial",
            "un viaje a Japón", "las criptomonedas", "correr una media maratón",
            "el teletrabajo"),
           ("¿Puedes resumir este texto en español?\n\n{e}",
            "Traduce esto al español, por favor:\n{e}", "corrige la gramática de esto:\n{e}"),
           ("gracias! y si lo quiero más corto?", "vale, ¿me das un ejemplo?",
            "no entendí la última parte", "perfecto, ¿y en inglés?"),
           (1, -6, -5, -3)),
    "fr": (("Tu peux m'expliquer simplement {t} ?", "J'ai besoin d'idées sur {t}",
            "Écris un court mail à mon propriétaire à propos de {t}",
            "bonjour, je cherche des conseils sur {t}",
            "Fais-moi un résumé de {t} en quelques lignes",
            "Quels sont les avantages et les inconvénients de {t} ?"),
           ("la retraite", "le télétravail", "l'impôt sur le revenu", "la permaculture",
            "un week-end en Bretagne", "la photo de nuit", "le marché immobilier",
            "l'apprentissage du piano", "les voitures électriques", "le régime sans gluten"),
           ("Peux-tu résumer ce texte en français ?\n\n{e}", "Traduis ceci en français :\n{e}",
            "Corrige les fautes :\n{e}"),
           ("merci ! et en plus court ?", "tu peux donner un exemple ?",
            "je n'ai pas compris la fin", "ok, et pour un débutant ?"),
           (1,)),
    "de": (("Kannst du mir das Thema {t} einfach erklären?",
            "Ich brauche ein paar Ideen zum Thema {t}",
            "Schreib eine kurze E-Mail an meinen Chef, Thema: {t}",
            "Was sind die Vor- und Nachteile? Es geht um {t}.",
            "hallo, ich hab eine Frage zu {t}",
            "Fass mir das Wichtigste zu {t} in ein paar Sätzen zusammen"),
           ("Steuererklärung", "Wärmepumpen", "Deutschlandticket", "Elternzeit",
            "Radtouren an der Ostsee", "Balkonkraftwerke", "Rente", "Sauerteigbrot",
            "Homeoffice", "Aktien-ETFs"),
           ("Kannst du diesen Text auf Deutsch zusammenfassen?\n\n{e}",
            "Übersetze das bitte ins Deutsche:\n{e}", "Korrigier bitte die Fehler:\n{e}"),
           ("danke! geht das kürzer?", "kannst du ein Beispiel geben?",
            "den letzten Teil hab ich nicht verstanden", "ok, und auf Englisch?"),
           (1,)),
    "pt": (("Você pode me explicar {t} de um jeito simples?",
            "Preciso de ideias sobre {t}",
            "Escreve um e-mail curto pro meu chefe sobre {t}",
            "oi, tenho uma dúvida sobre {t}",
            "Faz um resumo sobre {t} pra uma apresentação",
            "Quais as vantagens e desvantagens de {t}?"),
           ("o imposto de renda", "o Pix", "a dieta low carb", "o ENEM",
            "investir no Tesouro Direto", "uma viagem para Portugal",
            "o mercado de trabalho em TI", "plantas em apartamento", "o FGTS",
            "aprender violão"),
           ("Pode resumir esse texto em português?\n\n{e}",
            "Traduz isso para o português:\n{e}", "corrige a gramática disso:\n{e}"),
           ("valeu! e mais curto?", "me dá um exemplo?", "não entendi a última parte",
            "e se for para iniciantes?"),
           (-3,)),
    "it": (("Mi spieghi in parole semplici il tema {t}?", "Mi servono idee, argomento: {t}",
            "Scrivi una mail breve al mio capo, oggetto: {t}",
            "ciao, ho un dubbio riguardo a {t}",
            "Fammi un riassunto breve su {t} per una presentazione",
            "Quali sono i pro e i contro? Parlo di {t}."),
           ("dichiarazione 730", "pasta madre", "bonus casa", "viaggi in Sicilia",
            "mutui a tasso fisso", "intelligenza artificiale", "raccolta differenziata",
            "corsi di tedesco", "fantacalcio", "auto ibride"),
           ("Puoi riassumere questo testo in italiano?\n\n{e}",
            "Traduci in italiano per favore:\n{e}", "correggi gli errori:\n{e}"),
           ("grazie! più breve?", "mi fai un esempio?", "non ho capito l'ultima parte",
            "e in inglese?"),
           (1,)),
    "ru": (("Объясни простыми словами: {t}. Что это и как работает?", "Нужны идеи, тема: {t}",
            "Напиши короткое письмо начальнику, тема: {t}", "привет, вопрос по теме «{t}»",
            "Сделай краткое резюме по теме «{t}» для презентации",
            "Какие плюсы и минусы? Тема: {t}."),
           ("ипотека", "налоговый вычет", "удалённая работа", "изучение английского",
            "криптовалюта", "дача", "электромобили", "инфляция", "поездка в Казань",
            "здоровое питание"),
           ("Перескажи кратко этот текст на русском:\n\n{e}",
            "Переведи на русский, пожалуйста:\n{e}", "исправь ошибки в тексте:\n{e}"),
           ("спасибо! а можно короче?", "приведи пример", "не понял последнюю часть",
            "а на английском?"),
           (3,)),
    "ja": (("{t}について簡単に説明してもらえますか？", "{t}のアイデアをいくつか教えてください",
            "{t}について上司に送る短いメールを書いて", "{t}のメリットとデメリットは？",
            "こんにちは。{t}について質問があります", "{t}を発表用に短くまとめてください"),
           ("確定申告", "NISA", "テレワーク", "英語の勉強法", "京都旅行", "ふるさと納税",
            "電気自動車", "生成AI", "作り置きレシピ", "転職活動"),
           ("この文章を日本語で要約してください。\n\n{e}", "日本語に翻訳してください：\n{e}",
            "この英文の文法をチェックして：\n{e}"),
           ("ありがとう！もう少し短くできますか？", "例を一つ挙げてください",
            "最後の部分がよく分かりません", "英語だとどうなりますか？"),
           (9,)),
    "zh": (("能简单解释一下{t}吗？", "给我一些关于{t}的建议", "帮我写一封关于{t}的简短邮件给老板",
            "{t}有什么优缺点？", "你好，我想问一下{t}的问题", "帮我把{t}总结成几句话，用来做汇报"),
           ("个人所得税", "新能源汽车", "考研", "远程办公", "理财基金", "云南旅游", "学英语",
            "房贷提前还款", "健身减脂", "人工智能"),
           ("请用中文总结这段文字：\n\n{e}", "请翻译成中文：\n{e}",
            "帮我改一下这段英文的语法：\n{e}"),
           ("谢谢！能再短一点吗？", "能举个例子吗？", "最后一部分没看懂", "用英文怎么说？"),
           (8,)),
    "ko": (("{t}에 대해 쉽게 설명해 줄 수 있어?", "{t} 관련 아이디어 좀 줘",
            "{t}에 대해 팀장님께 보낼 짧은 메일 써줘", "{t}의 장단점이 뭐야?",
            "안녕하세요, {t} 관련해서 질문이 있어요", "{t} 내용을 발표용으로 짧게 정리해 줘"),
           ("연말정산", "전세 계약", "주식 투자", "토익 공부", "제주도 여행", "재택근무", "전기차",
            "다이어트 식단", "이직 준비", "인공지능"),
           ("이 글을 한국어로 요약해 줘:\n\n{e}", "한국어로 번역해 줘:\n{e}",
            "이 영어 문장 문법 좀 고쳐줘:\n{e}"),
           ("고마워! 좀 더 짧게 해줄래?", "예시 하나 들어줘", "마지막 부분이 잘 이해가 안 돼",
            "영어로는 어떻게 말해?"),
           (9,)),
    "tr": (("Bana {t} konusunu basitçe açıklar mısın?", "{t} hakkında birkaç fikir verir misin?",
            "Patronuma {t} hakkında kısa bir e-posta yaz",
            "{t} konusunun artıları ve eksileri neler?", "merhaba, {t} hakkında bir sorum var",
            "{t} konusunu sunum için kısaca özetle"),
           ("kira artışı", "emeklilik", "yapay zeka", "İngilizce öğrenmek", "Kapadokya gezisi",
            "elektrikli arabalar", "enflasyon", "evden çalışma", "sağlıklı beslenme",
            "kripto para"),
           ("Bu metni Türkçe özetler misin?\n\n{e}", "Türkçeye çevirir misin:\n{e}",
            "bu metindeki hataları düzelt:\n{e}"),
           ("teşekkürler! daha kısa olabilir mi?", "bir örnek verir misin?",
            "son kısmı anlamadım", "İngilizcesi nasıl olur?"),
           (3,)),
}


@register
class PolyglotPeople(Population):
    """People who write in their own language (ten of them), in the words people type:
    everyday questions, English text pasted to summarise, translate or correct, short
    follow-ups; some of their sessions in English (real ShareGPT conversations). Each
    person has a time zone of their language, a phone and a home address, a browser
    or an app, and human think time."""

    kind = "f_polyglot_people"
    label = "benign"

    @dataclasses.dataclass
    class Params:
        accounts: int = 90
        sessions_per_day: float = 1.0  # median over people; they vary 2x either way
        english_share: float = 0.3  # sessions in English
        paste_share: float = 0.25  # of the others: pasted English text
        think_time: float = 50.0
        languages: str = "es,fr,de,pt,it,ru,ja,zh,ko,tr"

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(1, 500)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        langs = [x.strip() for x in self.p.languages.split(",") if x.strip()]
        for i in range(self.p.accounts):
            account = self.account_name(i)
            asks, topics, pastes, follows, zones = _PEOPLE_LANGS[langs[i % len(langs)]]
            tz = rng.choice(zones)
            rate = _lognormal(rng, self.p.sessions_per_day, 0.7)
            agent = rng.choice(BROWSERS + ("okhttp/4.12.0", "ChatApp/5.2 (iOS 17.5)"))
            home, mobile = residential_addr(rng), residential_addr(rng)
            temperature = rng.choice([0.7, 1.0])
            for start in diurnal_times(rng, w.start, w.end, rate, tz):
                addr = mobile if rng.random() < 0.3 else home
                if rng.random() < self.p.english_share:
                    conv = rng.choice(w.benign)
                else:
                    if rng.random() < self.p.paste_share:
                        first = rng.choice(pastes).format(e=rng.choice(w.benign)[0][:900])
                    else:
                        first = rng.choice(asks).format(t=rng.choice(topics))
                    conv = (first,) + tuple(rng.sample(follows, 2))
                t = start
                for messages in conversation_turns(conv, 256, rng.randint(1, 3)):
                    yield SimRequest(t, account, messages, {"temperature": temperature},
                                     w.model_at(t, rng), addr, agent, self.name)
                    t += _reading(rng, messages[-1][1], 256, self.p.think_time)


_EDITS = ("add type hints", "rename the variables so this reads better", "add a docstring",
          "handle the empty input case", "make this async", "extract this into a helper "
          "function", "fix the failing test", "turn this loop into a comprehension",
          "add logging around the network call", "why does this throw here?",
          "write a test for this", "simplify this condition")
_TEAM_SYSTEM = ("You are DevMate, a coding assistant in the developer's editor. Be concise. "
                "When you change code, return the whole changed snippet.")


@register
class IdeTeam(Population):
    """A coding assistant bought for a team: one key, ``developers`` people in their own
    editors (plugin versions differ), each with bursts of inline edits on real code
    (ShareGPT's code conversations) and occasional chat sessions, in office hours, most
    from the office address and some from home; the plugin sends a ``user`` id."""

    kind = "f_ide_team"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        developers: int = 25
        bursts_per_hour: float = 1.2  # per developer, in office hours
        chats_per_hour: float = 0.3
        tz: float = 2.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(60, 400)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        chats = w.benign_topics.get("code") or w.benign
        code = _code(chats)
        for i in range(self.p.accounts):
            account = self.account_name(i)
            office = residential_addr(rng)
            for _ in range(self.p.developers):
                dev = f"dev-{rng.getrandbits(32):08x}"
                editor = rng.choice(["vscode/1.90.2", "vscode/1.89.1", "JetBrains/2024.1",
                                     "JetBrains/2023.3", "nvim/0.10.0"])
                agent = f"DevMate/3.{rng.randint(1, 4)}.{rng.randint(0, 9)} ({editor})"
                addr = office if rng.random() < 0.7 else residential_addr(rng)
                start, end = rng.uniform(8, 10), rng.uniform(16.5, 19)
                edit = {"temperature": 0.1, "max_tokens": 512, "user": dev}
                for burst in _window_times(rng, w.start, w.end, self.p.bursts_per_hour,
                                           self.p.tz, start, end):
                    snippet = rng.choice(code)[:1500]
                    t = burst
                    for _ in range(rng.randint(2, 12)):
                        text = f"{snippet}\n\n{rng.choice(_EDITS)}"
                        yield SimRequest(t, account, (("system", _TEAM_SYSTEM), ("user", text)),
                                         edit, w.model_at(t, rng, adopt=0.3), addr, agent,
                                         self.name)
                        t += _lognormal(rng, 25.0, 0.9)
                chat = {"temperature": 0.3, "max_tokens": 1024, "user": dev}
                for session in _window_times(rng, w.start, w.end, self.p.chats_per_hour,
                                             self.p.tz, start, end):
                    t = session
                    for messages in conversation_turns(rng.choice(chats), 1024,
                                                       rng.randint(1, 4)):
                        yield SimRequest(t, account, (("system", _TEAM_SYSTEM),) + messages,
                                         chat, w.model_at(t, rng, adopt=0.3), addr, agent,
                                         self.name)
                        t += _reading(rng, messages[-1][1], 1024, 60.0)


_ISSUES = (
    "Hi, my order {order} still hasn't arrived, it's been {days} days. Can you check?",
    "I was charged twice for order {order}. I need a refund for the duplicate.",
    "how do i change the delivery address on {order}",
    "The {product} I got is broken, the {part} doesn't work. What are my options?",
    "Can I return the {product}? I bought it {days} days ago and never opened it",
    "I can't log in, it says my password is wrong but I just reset it",
    "Do you ship to {country}? And how long does it take",
    "my discount code {code} isn't working at checkout",
    "I want to cancel my subscription before the next billing date",
    "Is the {product} compatible with the {other}?",
    "where is my refund for {order}?? you said 5 days",
    "hello I need an invoice with my company name for order {order}",
)
_CUSTOMER_FOLLOWUPS = (
    "ok thanks. and how long will the refund take?", "It says {order} though, are you sure?",
    "can I talk to a human", "that didn't work", "great, thank you!",
    "what's the return address?", "I already tried that", "Can you just email me the label?",
    "ok", "and if it doesn't arrive by friday?",
)
_PRODUCTS = ("blender", "running shoes", "wireless earbuds", "desk lamp", "coffee grinder",
             "backpack", "smart plug", "yoga mat", "kettle", "phone case")
_PARTS = ("switch", "charger", "lid", "left earbud", "zip", "power button", "cable")
_CUSTOMERS = ("Ana", "Ben", "Chloé", "Dmitri", "Emma", "Farid", "Grace", "Hiro", "Ines",
              "Jamal", "Kate", "Liam", "Mei", "Noah", "Olga", "Priya", "Sam", "Tomás")
_SUPPORT_SYSTEM = (
    "You are the customer support assistant of Brightcart, an online shop. Be polite and "
    "brief. Refunds go back to the original payment method within 5 business days. "
    "Returns are free within 30 days for unopened items. Never promise delivery dates "
    "you cannot see. Offer a human agent when the customer asks or is upset.\n\n"
    "Customer: {name} ({tier}). Latest order: {order}, {status}.")


@register
class SupportBot(Population):
    """A shop's customer-support bot: one key, one system prompt with each customer's
    record, many customers with templated issues in their own words and follow-ups, a
    few turns each at typing pace, following the customers' day; the backend sends a
    ``user`` id."""

    kind = "f_support_bot"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        conversations_per_day: float = 2500.0
        tz: float = -5.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(90, 500)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        for i in range(self.p.accounts):
            account = self.account_name(i)
            prefix = datacenter_addr(rng).rsplit(".", 1)[0]
            servers = [datacenter_addr(rng, prefix) for _ in range(2)]
            for start in diurnal_times(rng, w.start, w.end, self.p.conversations_per_day,
                                       self.p.tz):
                slots = {"order": f"#{rng.randint(100000, 999999)}",
                         "days": rng.randint(3, 40), "product": rng.choice(_PRODUCTS),
                         "part": rng.choice(_PARTS), "other": rng.choice(_PRODUCTS),
                         "country": rng.choice(["Canada", "Mexico", "the UK", "Australia"]),
                         "code": f"SAVE{rng.randint(5, 30)}"}
                system = _SUPPORT_SYSTEM.format(
                    name=rng.choice(_CUSTOMERS), tier=rng.choice(["member", "guest", "plus"]),
                    order=slots["order"], status=rng.choice(["shipped", "processing",
                                                             "delivered", "returned"]))
                conv = ((rng.choice(_ISSUES).format(**slots),)
                        + tuple(f.format(**slots) for f in rng.sample(_CUSTOMER_FOLLOWUPS, 4)))
                params = {"temperature": 0.3, "max_tokens": 400,
                          "user": f"c{rng.getrandbits(36):09x}"}
                t = start
                for messages in conversation_turns(conv, 400, rng.choice([1, 1, 2, 2, 3, 5])):
                    yield SimRequest(t, account, (("system", system),) + messages, params,
                                     w.model_at(t, rng, adopt=0.0), rng.choice(servers),
                                     "node-fetch/3.3.2", self.name)
                    t += _reading(rng, messages[-1][1], 400, 35.0)


_TARGET_LANGS = ("German", "French", "Spanish", "Italian", "Portuguese (Brazil)", "Japanese",
                 "Korean", "Simplified Chinese", "Dutch", "Polish", "Turkish", "Swedish")


@register
class Localisation(Population):
    """A localisation pipeline: documents (real text, long) each translated into several
    languages one request after another as answers come back, jobs started through the
    office day by a CI sync; temperature near 0, ``max_tokens`` sized to the input."""

    kind = "f_localisation"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        jobs_per_hour: float = 12.0  # in office hours
        tz: float = 2.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(60, 500)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        for i in range(self.p.accounts):
            account = self.account_name(i)
            addr = datacenter_addr(rng)
            for job in _window_times(rng, w.start, w.end, self.p.jobs_per_hour, self.p.tz,
                                     8.0, 19.0):
                text = _excerpt(rng, w.benign, 400, 3000)
                cap = min(4096, max(256, 2 * len(text.split())))
                params = {"temperature": 0.1, "max_tokens": cap}
                t = job
                for lang in rng.sample(_TARGET_LANGS, rng.randint(3, 9)):
                    system = (f"You are a professional translator. Translate the user's text "
                              f"into {lang}. Keep Markdown, placeholders like {{name}} and "
                              f"line breaks. Output only the translation.")
                    yield SimRequest(t, account, (("system", system), ("user", text)), params,
                                     w.model_at(t, rng, adopt=0.0), addr,
                                     "locsync/1.4.2 (python-httpx/0.27.0)", self.name)
                    t += answer_tokens(text, cap) / 50.0 + rng.uniform(0.5, 3)


@register
class DocDigest(Population):
    """A nightly map-reduce summarisation of long reports: each report cut into sections
    summarised in parallel by a few workers, then one request combining the section
    summaries, at the same hour each night, greedy."""

    kind = "f_doc_digest"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        reports: int = 250  # a night
        workers: int = 4
        hour: float = 1.0  # local start hour
        tz: float = 0.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(30, 300)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        mapped = {"temperature": 0.0, "max_tokens": 350}
        reduced = {"temperature": 0.0, "max_tokens": 700}
        for i in range(self.p.accounts):
            account = self.account_name(i)
            addr = datacenter_addr(rng)
            day = math.floor((w.start + self.p.tz * 3600) / DAY) * DAY - self.p.tz * 3600
            # Nights from the one that began up to 12 h before the world (a run takes an
            # hour or so: one that began earlier is over).
            if day + self.p.hour * 3600 < w.start - 12 * 3600:
                day += DAY
            while day < w.end:
                free = [day + self.p.hour * 3600] * self.p.workers
                for r in range(self.p.reports):
                    sections = [_excerpt(rng, w.benign, 1500, 3500)
                                for _ in range(rng.randint(3, 8))]
                    summaries: list[str] = []
                    done = 0.0
                    for s, section in enumerate(sections):
                        k = min(range(len(free)), key=free.__getitem__)
                        t = free[k]
                        text = (f"Summarise section {s + 1} of {len(sections)} of an internal "
                                f"report in at most five sentences. Keep names, figures and "
                                f"dates.\n\n{section}")
                        if w.start <= t < w.end:
                            yield SimRequest(t, account, (("user", text),), mapped,
                                             w.model_at(t, rng, adopt=0.0), addr,
                                             "OpenAI/Python 1.35.3", self.name)
                        free[k] = t + answer_tokens(text, 350) / 40.0 + rng.uniform(0.5, 1.5)
                        done = max(done, free[k])
                        summaries.append(answer_text(text, 350))
                    joined = "\n\n".join(f"Section {s + 1}: {x}" for s, x in enumerate(summaries))
                    text = (f"Combine these section summaries of report {r + 1} into one "
                            f"executive summary with a short list of action items.\n\n{joined}")
                    k = min(range(len(free)), key=free.__getitem__)
                    t = max(done, free[k])
                    if w.start <= t < w.end:
                        yield SimRequest(t, account, (("user", text),), reduced,
                                         w.model_at(t, rng, adopt=0.0), addr,
                                         "OpenAI/Python 1.35.3", self.name)
                    free[k] = t + answer_tokens(text, 700) / 40.0 + 1.0
                day += DAY


_WORD_PROBLEMS = (
    "Maria has {a} stickers. She gives {b} to each of her {c} friends and then buys {d} "
    "more. How many stickers does she have now?",
    "A bakery sells muffins at ${b} each and cookies at ${c} each. On Monday it sold {a} "
    "muffins and {d} cookies. How much money did it take in?",
    "A car travels {a} km on {b} litres of fuel. How many litres does it need for {d} km?",
    "Tom reads {b} pages a day. The book has {a} pages and he has already read {d}. How many "
    "more days does he need?",
    "A garden is {b} m long and {c} m wide. Fencing costs ${d} per metre. How much does it "
    "cost to fence the whole garden?",
    "There are {a} students in a school; {c} out of every 10 take the bus. How many do "
    "not take the bus?",
    "A tank has {a} litres of water. {b} litres leak out each hour and {c} litres are "
    "added every 2 hours. How much water is left after {d} hours?",
    "Sara earns ${a} a week and saves {c} tenths of it. How many weeks until she has "
    "saved ${d}?",
)
_FEW_SHOT = (
    "Q: Ali has 3 boxes with 12 pencils each. He gives away 7 pencils. How many are left?\n"
    "A: Let's think step by step. 3 boxes x 12 pencils = 36 pencils. 36 - 7 = 29. "
    "The answer is 29.\n\n"
    "Q: A shirt costs $20 and is 25% off. What is the sale price?\n"
    "A: Let's think step by step. 25% of 20 is 5. 20 - 5 = 15. The answer is 15.\n\n"
    "Q: A train goes 60 km in 45 minutes. How far does it go in 2 hours at that speed?\n"
    "A: Let's think step by step. 45 minutes is 0.75 hours, so the speed is 60 / 0.75 = "
    "80 km/h. In 2 hours: 80 x 2 = 160 km. The answer is 160.\n\n")


@register
class NewResearcher(Population):
    """A researcher on a key made ``age_days`` ago (a new account), running a few-shot
    chain-of-thought maths benchmark at temperature 0 through a few workers from a
    campus address, then, ``rerun_after`` later, the whole benchmark again with a fixed
    answer format."""

    kind = "f_new_researcher"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        age_days: float = 2.0
        items: int = 500
        parallel: int = 4
        run_hour: float = 14.0  # local hour of the first run, on the first day
        rerun_after: float = 10800.0
        tz: float = 8.0

    def accounts(self) -> list[AccountSpec]:
        return [self._account(i, self.world.start - self.p.age_days * DAY)
                for i in range(self.p.accounts)]

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        items: list[str] = []
        for _ in range(self.p.items):
            nums = {k: rng.randint(2, 60) for k in "abcd"}
            items.append(rng.choice(_WORD_PROBLEMS).format(**nums))
        params = {"temperature": 0.0, "max_tokens": 512}
        day0 = math.floor((w.start + self.p.tz * 3600) / DAY) * DAY - self.p.tz * 3600
        first = day0 + self.p.run_hour * 3600
        if first < w.start:
            first += DAY
        for i in range(self.p.accounts):
            account = self.account_name(i)
            addr = residential_addr(rng)
            for run, suffix in ((first, ""), (first + self.p.rerun_after,
                                              " End with 'The answer is N.'")):
                free = [run] * self.p.parallel
                for item in items:
                    text = f"{_FEW_SHOT}Q: {item}{suffix}\nA: Let's think step by step."
                    k = min(range(len(free)), key=free.__getitem__)
                    t = free[k]
                    if t >= w.end:
                        break
                    yield SimRequest(t, account, (("user", text),), params,
                                     w.model_at(t, rng, adopt=1.0), addr,
                                     "python-requests/2.31.0", self.name)
                    free[k] = t + answer_tokens(text, 512) / 50.0 + rng.uniform(0.2, 0.8)


_HOMEWORK = (
    "solve 3x + {a} = {b}", "find the area of a triangle with base {a} cm and height {b} cm",
    "what is {a}% of {b}", "simplify {a}/{b}", "why does ice float on water",
    "what is photosynthesis in simple words", "help me write a paragraph about {topic}",
    "what is a metaphor? give examples", "how do i find the perimeter of a rectangle "
    "{a} by {b}", "whats the difference between weather and climate",
    "can you check my answer: {a} x {b} = {c}", "explain the water cycle for my test tmrw",
    "i need 3 facts about {topic} for my project",
)
_TOPICS = ("volcanoes", "the Romans", "climate change", "my favourite animal", "the moon",
           "recycling", "the Amazon rainforest", "ancient Egypt")
_STUDENT_FOLLOWUPS = ("i dont get the second step", "can you show your work for that part",
                      "ok so whats the answer", "can u explain it easier",
                      "wait why do you divide there", "thanks!!", "is that right? {a}",
                      "my teacher said it's wrong", "ok next one: what is {b} squared")
_TUTOR_SYSTEM = ("You are Ollie, a friendly tutor for students aged 11 to 16. Guide the "
                 "student step by step, ask them to show their work, and never just give the "
                 "final answer to a homework question. Keep answers short and encouraging.")


@register
class TutoringApp(Population):
    """A homework tutoring app: one key, a system prompt that asks for worked steps,
    students after school (a ``user`` id each) with templated homework or real
    learning and maths questions, and short confused follow-ups."""

    kind = "f_tutoring_app"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        sessions_per_hour: float = 90.0  # after school
        tz: float = 8.0

    def accounts(self) -> list[AccountSpec]:
        return self._aged_accounts(60, 400)

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        real = (w.benign_topics.get("learning", []) + w.benign_topics.get("math", [])) \
            or w.benign
        for i in range(self.p.accounts):
            account = self.account_name(i)
            prefix = datacenter_addr(rng).rsplit(".", 1)[0]
            for start in _window_times(rng, w.start, w.end, self.p.sessions_per_hour,
                                       self.p.tz, 15.0, 23.0, weekdays=False):
                nums = {"a": rng.randint(2, 40), "b": rng.randint(2, 90),
                        "c": rng.randint(4, 500), "topic": rng.choice(_TOPICS)}
                first = (rng.choice(_HOMEWORK).format(**nums) if rng.random() < 0.75
                         else rng.choice(real)[0])
                conv = (first,) + tuple(f.format(**nums)
                                        for f in rng.sample(_STUDENT_FOLLOWUPS, 3))
                params = {"temperature": 0.5, "max_tokens": 600,
                          "user": f"s{rng.getrandbits(32):08x}"}
                t = start
                for messages in conversation_turns(conv, 600, rng.randint(1, 4)):
                    yield SimRequest(t, account, (("system", _TUTOR_SYSTEM),) + messages,
                                     params, w.model_at(t, rng, adopt=0.0),
                                     datacenter_addr(rng, prefix), "node-fetch/3.3.2",
                                     self.name)
                    t += _reading(rng, messages[-1][1], 600, 40.0)


_COPY_FORMATS = ("a product description", "three taglines", "an Instagram caption",
                 "a launch email", "a landing page hero section", "a short ad for search")
_TONES = ("friendly", "professional", "playful", "bold", "minimal", "luxurious")


@register
class LaunchDay(Population):
    """A young startup's marketing-copy generator on launch day: one key made
    ``age_days`` ago, templated requests around each end user's own product notes (real
    text), up to three variants per request (``n``), and traffic that starts small and
    doubles every ``doubling`` seconds up to ``cap_per_hour``, shaped by its users' day."""

    kind = "f_launch_day"
    label = "heavy"

    @dataclasses.dataclass
    class Params:
        accounts: int = 1
        age_days: float = 12.0
        base_per_hour: float = 20.0
        doubling: float = 10800.0
        cap_per_hour: float = 600.0
        tz: float = 1.0

    def accounts(self) -> list[AccountSpec]:
        return [self._account(i, self.world.start - self.p.age_days * DAY)
                for i in range(self.p.accounts)]

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        top = max(HOURLY)
        for i in range(self.p.accounts):
            account = self.account_name(i)
            prefix = datacenter_addr(rng).rsplit(".", 1)[0]
            servers = [datacenter_addr(rng, prefix) for _ in range(2)]
            users: list[str] = []
            t = w.start
            while True:
                t += rng.expovariate(self.p.cap_per_hour / 3600)
                if t >= w.end:
                    break
                rate = min(self.p.cap_per_hour,
                           self.p.base_per_hour * 2 ** ((t - w.start) / self.p.doubling))
                if rng.random() >= rate / self.p.cap_per_hour * HOURLY[
                        int(_local_hour(t, self.p.tz))] / top:
                    continue
                if not users or rng.random() < 0.3:  # a new sign-up tries it
                    users.append(f"u_{rng.getrandbits(40):010x}")
                notes = rng.choice(w.benign)[0][:400]
                text = (f"Write {rng.choice(_COPY_FORMATS)} in a {rng.choice(_TONES)} tone "
                        f"for this product.\n\nProduct notes from the customer:\n{notes}")
                params: dict[str, Any] = {"temperature": 0.9, "max_tokens": 400,
                                          "user": rng.choice(users)}
                if rng.random() < 0.4:
                    params["n"] = 3
                yield SimRequest(t, account, (("user", text),), params,
                                 w.model_at(t, rng, adopt=1.0), rng.choice(servers),
                                 "node-fetch/3.3.2", self.name)


# The split's tables, as ``splits.build`` takes them: (kind, name, params).
PEOPLE: list[tuple[str, str, dict[str, Any]]] = [
    ("f_polyglot_people", "people", {"accounts": 90}),
    ("f_polyglot_people", "people-en", {"accounts": 30, "english_share": 0.8,
                                        "sessions_per_day": 1.5}),
    ("f_ide_team", "ide-team", {}),
    ("f_support_bot", "support-bot", {}),
    ("f_localisation", "localisation", {}),
    ("f_doc_digest", "doc-digest", {}),
    ("f_new_researcher", "new-researcher", {}),
    ("f_tutoring_app", "tutoring", {}),
    ("f_launch_day", "launch-day", {}),
]
ATTACKS: list[tuple[str, str, dict[str, Any]]] = [
    ("f_history_trace", "history-trace", {}),
    ("f_slow_boil", "slow-boil", {}),
    ("f_lang_launder", "lang-launder", {}),
    ("f_ide_sweep", "ide-sweep", {}),
    ("f_judge_pairs", "judge-pairs", {}),
    ("f_reseller_front", "reseller-front", {}),
    ("f_staggered_fleet", "staggered-fleet", {}),
]
