"""The ``Signal`` interface, its registry by name, and what a signal reports.

A signal keeps a small state per account (bounded: counters, running moments, capped
tables; never a history), updates it from each event's ``EventFeatures``, and reports
one number, its ``value``. ``strength`` maps that value, given the population's
``Baseline`` for the same signal, to [0, 1]; ``explain`` says it in words. Signals belong
to one of three groups, which account scoring combines (see ``scoring``):

- ``intent``: what the account extracts (long outputs, reasoning traces, topic sweeps);
- ``automation``: how it sends (clockwork timing, parallelism, templates);
- ``volume``: how much, against its own history and the population;
- ``extraction``: how much of value it took, in absolute amounts (reasoning-trace
  tokens and output on prompts it had not sent before), which cover traffic of another
  kind cannot dilute the way it dilutes shares.

A signal may define ``merge(states) -> state`` when its state pools across accounts
(counts and sums): a campaign is then scored as one account holding the members'
pooled traffic.

Built-in signals register in ``detection.builtin`` exactly as a third-party one would::

    @register_signal
    class MySignal: name = "my_signal"; ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from distillguard.registry import Registry, RegistryError

if TYPE_CHECKING:
    import numpy as np

    from distillguard.config import Settings
    from distillguard.telemetry.events import RequestEvent

GROUPS = ("intent", "automation", "volume", "extraction")
# An account whose first key is at least this old is established: campaigns judge a
# group of such accounts tied to the rest only by copyable evidence apart
# (``campaigns._apart``), and the new-account allowance (``policy.rules``) ends here.
ESTABLISHED_S = 30 * 86400.0


@dataclasses.dataclass(slots=True)
class EventFeatures:
    """What the pipeline derives once per event and hands to every signal.

    ``topic`` is the prompt's nearest topic in the topic map (-1 without embeddings);
    ``embedding`` its unit vector (None without embeddings); ``elicits`` whether the prompt
    asks for reasoning traces or dataset rows; ``bands`` the LSH bands of its masked
    skeleton; ``wrappers`` the hashes of its skeleton's first and last words (a fixed
    wrapper around varying questions); ``ok`` whether the request succeeded (economics
    count only those). ``novel`` is the weight in [0, 1] of the last user message being
    one the account never sent before (exact for sampled hashes, the account's novelty
    rate for others); ``tools`` how many tools the request declared; ``raw`` the event's
    features dict (``detection.features``); ``sketch`` the prompt's random Fourier
    features with their squared norm last (``PromptSketch.extended``; None without an
    embedding).
    """

    event: RequestEvent
    ts: float
    end_ts: float
    ok: bool
    params_key: int
    max_tokens: int | None
    n: int
    logprobs: bool
    assistant_turns: int
    bands: tuple[int, ...]
    topic: int
    embedding: np.ndarray | None
    elicits: bool
    wrappers: tuple[int, ...] = ()
    novel: float = 1.0
    tools: int = 0
    raw: dict[str, Any] | None = None
    sketch: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A signal's value across the tracked population (accounts with enough events),
    or, while that population is too small, the prior shipped with the package.

    ``source`` is ``"live"`` or ``"prior"``; ``p99`` is known for priors.
    """

    median: float
    p90: float
    accounts: int
    source: str = "live"
    p99: float | None = None

    def describe(self, fmt: str = "{:.2f}") -> str:
        if self.source == "prior":
            return (f"prior from real ShareGPT traffic: median {fmt.format(self.median)}, "
                    f"90th percentile {fmt.format(self.p90)} over {self.accounts} sampled "
                    f"accounts; live population too small")
        if self.source == "live-capped":
            return (f"live population over {self.accounts} accounts, capped at the prior "
                    f"from real ShareGPT traffic: median {fmt.format(self.median)}, 90th "
                    f"percentile {fmt.format(self.p90)}")
        return (f"live population median {fmt.format(self.median)}, 90th percentile "
                f"{fmt.format(self.p90)} over {self.accounts} accounts")


def capped(live: Baseline, prior: Baseline | None) -> Baseline:
    """``live`` made no more lenient than ``prior`` allows: its median at most the
    prior's 90th percentile, its 90th percentile at most the prior's 99th.

    Many accounts of one operator can be most of a small provider's population, and
    its own median then calls its behaviour normal (measured: 20 sybils of 24 tracked
    accounts set the reasoning-request median to their own 12%). Real traffic's upper
    percentiles bound what "normal" may mean; the population can still make a
    baseline stricter."""
    if prior is None:
        return live
    top_median = prior.p90
    top_p90 = prior.p99 if prior.p99 is not None else prior.p90
    if live.median <= top_median and live.p90 <= top_p90:
        return live
    return Baseline(min(live.median, top_median), min(live.p90, top_p90), live.accounts,
                    "live-capped")


@runtime_checkable
class Signal(Protocol):
    """One per-account harvesting signal. Stateless itself; state lives per account."""

    name: str
    group: str  # one of GROUPS
    # how much a fully suspicious value counts within its group, in [0, 1]; 0: reported
    # (signals_of, the console), not scored and never a reason
    weight: float
    description: str

    def new_state(self) -> Any:
        """A fresh per-account state (small and bounded)."""
        ...

    def observe(self, state: Any, features: EventFeatures) -> None:
        """Update ``state`` with one event."""
        ...

    def value(self, state: Any) -> float | None:
        """The signal's value, or None while there is too little data to say."""
        ...

    def strength(self, value: float, baseline: Baseline | None) -> float:
        """How suspicious ``value`` is, in [0, 1] (0: normal)."""
        ...

    def explain(self, value: float, baseline: Baseline | None) -> str:
        """The value and what it was compared to, in words an analyst can check."""
        ...


SignalFactory = Callable[["Settings | None"], Signal]
# Built-ins register when ``detection.builtin`` is imported (on the first lookup); other
# packages through the ``distillguard.signals`` entry-point group.
SIGNALS: Registry[SignalFactory] = Registry("signal", "distillguard.signals",
                                            builtins="distillguard.detection.builtin")


def register_signal(factory: Any) -> Any:
    """Register a signal class (or factory ``(settings) -> Signal``) under its ``name``.

    Usable as a class decorator. Registering a taken name is an error, so two plugins
    never silently replace each other.
    """
    return SIGNALS.register(_signal_name(factory), factory)


def _signal_name(factory: Any) -> str:
    name = getattr(factory, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError("a signal needs a non-empty string attribute 'name'")
    return name


def signal_names() -> list[str]:
    """Names of every registered signal, built-in and third-party."""
    return SIGNALS.names()


def create_signal(name: str, settings: Settings | None = None) -> Signal:
    """An instance of the signal registered as ``name``; KeyError names the choices."""
    try:
        factory = SIGNALS.get(name)
    except RegistryError as exc:
        raise KeyError(str(exc)) from None
    signal = factory(settings)
    if signal.group not in GROUPS:
        raise ValueError(f"signal {name!r} has group {signal.group!r}, not one of {GROUPS}")
    return signal
