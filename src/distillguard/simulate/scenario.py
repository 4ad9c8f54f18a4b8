"""Scenarios: TOML files that mix populations and campaigns over a duration.

::

    [scenario]
    name = "swarm-day"
    description = "Casual users, heavy legitimate users and a sybil swarm"
    duration = "1d"                   # seconds or 90s / 15m / 6h / 7d
    start = "2025-06-02T00:00:00Z"    # simulated start (default: this date)
    seed = 1
    detection_interval = "5m"         # simulated seconds between detection rounds
    held_out = true                   # never used to calibrate detection (reported)

    [[model]]                         # models served (default: one, "sim-model")
    name = "sim-model-v1"
    [[model]]
    name = "sim-model-v2"
    release = "3d"                    # offset from start

    [settings]                        # distillguard settings for this run (optional)
    detection_min_events = 20

    [policy]                          # policy rules, as in a settings file (optional)
    [[policy.rules]]
    ...

    [[population]]                    # benign and heavy users
    kind = "casual"
    accounts = 500

    [[campaign]]                      # attackers
    strategy = "sybil_swarm"
    accounts = 50
    target = 20000

Every population table takes ``name`` (default: its kind, numbered when repeated) and
the fields of its kind's ``Params`` (``distillguard simulate --list`` shows them).
Built-in scenarios ship in ``distillguard/simulate/scenarios``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from distillguard.simulate.populations import (
    POPULATIONS,
    Model,
    Population,
    ScenarioError,
    World,
    create_population,
    population_kinds,
)

DEFAULT_START = dt.datetime(2025, 6, 2, tzinfo=dt.UTC).timestamp()
_SCENARIO_KEYS = {"name", "description", "duration", "start", "seed", "detection_interval",
                  "held_out", "corpus"}


@dataclasses.dataclass
class Scenario:
    """A parsed scenario; ``build`` makes its populations."""

    name: str
    description: str
    source: str
    duration: float
    start: float
    seed: int
    detection_interval: float
    held_out: bool
    models: list[Model]
    settings: dict[str, Any]
    policy: dict[str, Any] | None
    tables: list[tuple[str, str, dict[str, Any], str]]  # (kind, name, params, where)
    corpus: int = 4000
    corpus_offset: int = 0

    def build(self, scale: float = 1.0) -> tuple[World, list[Population]]:
        """The world and its populations; ``scale`` multiplies account counts above one
        (at least 3 for a campaign) and campaign targets, for quick small runs."""
        world = World(self.start, self.duration, self.seed, self.models, self.corpus,
                      self.corpus_offset)
        pops = []
        for kind, name, params, where in self.tables:
            params = dict(params)
            cls = POPULATIONS.get(kind)
            if scale != 1.0 and params.get("accounts", 1) > 1:
                floor = 3 if cls.label == "attack" else 1
                params["accounts"] = max(floor, int(round(params["accounts"] * scale)))
            if scale != 1.0 and cls.label == "attack":
                default = next(f.default for f in dataclasses.fields(cls.Params)
                               if f.name == "target")
                params["target"] = max(1, int(round(params.get("target", default) * scale)))
            pops.append(create_population(kind, name, params, world, where))
        return world, pops


def _duration(value: Any, where: str) -> float:
    from distillguard.config import SettingsError
    from distillguard.policy.rules import parse_duration

    try:
        seconds = parse_duration(value, where)
    except SettingsError as exc:
        raise ScenarioError(str(exc).replace("ttl", "duration")) from None
    if seconds is None:
        raise ScenarioError(f"{where} is required")
    return seconds


def parse_scenario(data: dict[str, Any], source: str) -> Scenario:
    """A ``Scenario`` from decoded TOML; ScenarioError naming what is wrong."""
    population_kinds()
    unknown = set(data) - {"scenario", "model", "settings", "policy", "population", "campaign"}
    if unknown:
        raise ScenarioError(f"{source}: unknown table(s) {', '.join(sorted(unknown))}")
    head = data.get("scenario")
    if not isinstance(head, dict):
        raise ScenarioError(f"{source}: a [scenario] table is required")
    extra = set(head) - _SCENARIO_KEYS
    if extra:
        raise ScenarioError(f"{source}: unknown key(s) in [scenario]: {', '.join(sorted(extra))}")
    duration = _duration(head.get("duration"), f"{source}: scenario.duration")
    start = head.get("start", DEFAULT_START)
    if isinstance(start, str):
        try:
            start = dt.datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise ScenarioError(f"{source}: scenario.start must be an ISO date-time or "
                                f"Unix seconds, got {start!r}") from None
    elif isinstance(start, dt.datetime):
        start = start.timestamp()
    models = []
    for i, m in enumerate(data.get("model") or [{"name": "sim-model"}]):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            raise ScenarioError(f"{source}: model[{i}] needs a name")
        release = m.get("release", 0)
        offset = 0.0 if release in (0, "0", "0s") else _duration(release, f"{source}: "
                                                                  f"model[{i}].release")
        models.append(Model(m["name"], float(start) + offset))
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise ScenarioError(f"{source}: [settings] must be a table")
    policy = data.get("policy")
    if policy is not None:
        from distillguard.config import SettingsError
        from distillguard.policy.rules import parse_rules

        try:
            parse_rules(policy, source)
        except SettingsError as exc:
            raise ScenarioError(str(exc)) from None
    tables: list[tuple[str, str, dict[str, Any], str]] = []
    names: set[str] = set()
    for section, key in (("population", "kind"), ("campaign", "strategy")):
        items = data.get(section) or []
        if not isinstance(items, list):
            raise ScenarioError(f"{source}: {section} must be an array of tables ([[{section}]])")
        for i, item in enumerate(items):
            where = f"{source}: {section}[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get(key), str):
                raise ScenarioError(f"{where} needs {key} = \"...\"; known: "
                                    f"{', '.join(population_kinds())}")
            params = dict(item)
            kind = params.pop(key)
            if kind not in POPULATIONS:
                raise ScenarioError(f"{where}: unknown {key} {kind!r}; known: "
                                    f"{', '.join(population_kinds())}")
            cls = POPULATIONS.get(kind)
            if (section == "campaign") != (cls.label == "attack"):
                use = ("an attack strategy: use [[campaign]]" if cls.label == "attack"
                       else "not an attack strategy: use [[population]]")
                raise ScenarioError(f"{where}: {kind!r} is {use}")
            name = str(params.pop("name", kind))
            if name in names:
                n = 2
                while f"{name}{n}" in names:
                    n += 1
                name = f"{name}{n}"
            names.add(name)
            tables.append((kind, name, params, f"{where} ({name})"))
    if not tables:
        raise ScenarioError(f"{source}: no [[population]] or [[campaign]] tables")
    interval = _duration(head.get("detection_interval", 300), f"{source}: "
                         "scenario.detection_interval")
    scenario = Scenario(
        name=str(head.get("name") or Path(source).stem),
        description=str(head.get("description", "")),
        source=source, duration=duration, start=float(start), seed=int(head.get("seed", 0)),
        detection_interval=interval, held_out=bool(head.get("held_out", False)),
        models=models, settings=settings, policy=policy, tables=tables,
        corpus=int(head.get("corpus", 4000)))
    # Build once at scale 1 without generating traffic: parameter errors surface now.
    world = World(scenario.start, duration, scenario.seed, models, scenario.corpus)
    for kind, name, params, where in tables:
        create_population(kind, name, params, world, where)
    if math.isnan(interval) or interval <= 0:
        raise ScenarioError(f"{source}: detection_interval must be positive")
    return scenario


def builtin_names() -> list[str]:
    """Names of the scenarios shipped with the package."""
    folder = resources.files("distillguard.simulate") / "scenarios"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(ref: str) -> Scenario:
    """A scenario by built-in name or by path to a TOML file; ScenarioError if neither."""
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
        source = str(path)
    elif ref in builtin_names():
        text = (resources.files("distillguard.simulate") / "scenarios" / f"{ref}.toml").read_text()
        source = f"built-in:{ref}"
    else:
        raise ScenarioError(f"no scenario file {ref!r} and no built-in scenario of that name; "
                            f"built-ins: {', '.join(builtin_names())}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {source} is not valid TOML: {exc}") from None
    return parse_scenario(data, source)
