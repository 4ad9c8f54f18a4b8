"""Framing probe: can an attacker get honest accounts refused by linking itself to them?

A campaign's risk reaches every core member (``block-campaign``), and a member is core
with two kinds of evidence. Two of those kinds, a shared prompt template and a shared
client (user agent and exact sampling parameters), are things an outsider can copy: a
public framework's default prompt, a popular SDK's user agent. This probe runs the
calibration split with one more attacker, ``framer``: a burst of new accounts that
harvest the split's question pool at a steady rate from one cloud /24, and

- ``--copy`` (the default): send each question inside the template, system prompt,
  client and parameters of the split's retrieval apps (``populations.RagApp``), with an
  empty context so the model supplies the whole answer;
- ``--no-copy``: the same harvest in its own words and client (the control);
- ``--aged``: the framer's accounts are 40-200 days old and each sends from its own /24,
  so only the template and the client tie them: the swarm that judging established
  accounts apart (``detection.campaigns``) no longer acts on as a campaign. With
  ``--no-copy --aged`` they share no template either (one client only);
- ``--rent``: the framer also sends from the /24 of one retrieval app (``rag-big``),
  as if it had rented cloud addresses next to the app's servers, so that a shared
  address prefix ties it to the app (the campaign split once counted one prefix as
  evidence no outsider can copy);
- ``--mixed K``: K of the framer's accounts are 40-200 days old, the rest new, all from
  its one /24: an operator's aged accounts beside its new ones, or (K = 5) an aged swarm
  on one /24: what counting a prefix as copyable costs.

It prints each campaign's row and which benign accounts were acted on. The calibration
split is the one whose retrieval template is known here (the test split's was not read),
so the figures say whether the mechanism exists, not how often it would be met.

Usage: python bench/framing.py [--hours 6] [--no-copy] [--aged] [--rent] [--mixed K]
       [--embeddings]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from distillguard.config import Settings  # noqa: E402
from distillguard.simulate.populations import DAY, register  # noqa: E402
from distillguard.simulate.strategies import Campaign  # noqa: E402
from distillguard.simulate.traffic import AccountSpec, SimRequest, datacenter_addr  # noqa: E402

RAG_SYSTEM = "You are a helpful support assistant for Acme Docs."
RAG_TEMPLATE = ("Answer the question using only the context below. If the answer is not "
                "in the context, say so.\n\nContext:\n\"\"\"\"\"\"\n\nQuestion: {q}")


@register
class Framer(Campaign):
    """Harvesting accounts made in one burst; with ``copy`` they dress every request as
    the split's retrieval apps do."""

    kind = "probe_framer"

    @dataclasses.dataclass
    class Params:
        accounts: int = 5
        target: int = 20000
        start: float = 3600.0
        per_account_rpm: float = 4.0
        copy: bool = True
        # Accounts 40-200 days old, each from its own /24 (unless ``prefix``): nothing but
        # the template and the client ties them (what the fix spares; module docstring).
        aged: bool = False
        # Send from this /24 (``--rent``: a retrieval app's) instead of one of its own.
        prefix: str = ""
        # The first ``mixed`` accounts are aged, the others new (one /24 for all).
        mixed: int = 0

    def accounts(self) -> list[AccountSpec]:
        if self.p.aged:
            return self._aged_accounts(40, 200)
        new = self._burst_accounts(600.0, DAY)
        if not self.p.mixed:
            return new
        return self._aged_accounts(40, 200)[:self.p.mixed] + new[self.p.mixed:]

    def requests(self) -> Iterator[SimRequest]:
        w, rng = self.world, self.rng
        if self.p.copy:
            params, agent = {"temperature": 0.2, "max_tokens": 512}, "python-requests/2.32.3"
        else:
            params, agent = {"temperature": 0.7, "max_tokens": 1024}, "aiohttp/3.9.5"
        prefix = datacenter_addr(rng).rsplit(".", 1)[0]
        for i, count in enumerate(self._share()):
            account = self.account_name(i)
            if self.p.aged:
                prefix = datacenter_addr(rng).rsplit(".", 1)[0]
            prefix = self.p.prefix or prefix
            start = w.start + self.p.start + rng.uniform(0, 300)
            for t in self._steady(rng, start, self.p.per_account_rpm, count):
                q = rng.choice(w.harvest)[0][:300]
                messages: tuple[tuple[str, str], ...]
                if self.p.copy:
                    messages = (("system", RAG_SYSTEM), ("user", RAG_TEMPLATE.format(q=q)))
                else:
                    messages = (("user", q),)
                yield SimRequest(t, account, messages, params,
                                 w.model_at(t, rng, adopt=1.0),
                                 datacenter_addr(rng, prefix), agent, self.name)


def _prefix_of(population: str, hours: float) -> str:
    """The /24 the split's ``population`` sends most from (the framer's generation does
    not change the others': each population draws from its own generator)."""
    from collections import Counter

    from distillguard.simulate.runner import Traffic
    from distillguard.simulate.splits import build

    traffic = Traffic.generate(build("calibration", duration=hours * 3600.0), 1.0)
    prefixes = Counter(r.addr.rsplit(".", 1)[0] for r in traffic.requests
                       if r.group == population)
    if not prefixes:
        raise SystemExit(f"framing: the calibration split has no population {population!r}")
    return prefixes.most_common(1)[0][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--copy", action=argparse.BooleanOptionalAction, default=True,
                    help="dress the harvest as the split's retrieval apps (default)")
    ap.add_argument("--aged", action="store_true", help="aged accounts, each from its own "
                    "/24 (the cost of judging established accounts apart)")
    ap.add_argument("--rent", action="store_true", help="send from the /24 of the retrieval "
                    "app rag-big (addresses rented next to its servers)")
    ap.add_argument("--mixed", type=int, default=0, metavar="K", help="K of the accounts "
                    "aged, the rest new, one /24 for all")
    ap.add_argument("--embeddings", action="store_true")
    ap.add_argument("--embedding-sample", type=float, default=0.25)
    args = ap.parse_args()

    from distillguard.simulate.run import run_scenario
    from distillguard.simulate.splits import build

    base = Settings.load(env={}).replace(detection_embedding_sample=args.embedding_sample)
    framer: dict[str, object] = {"copy": args.copy, "aged": args.aged, "mixed": args.mixed}
    if args.rent:
        framer["prefix"] = _prefix_of("rag-big", args.hours)
    scenario = build("calibration", duration=args.hours * 3600.0,
                     extra=[("probe_framer", "framer", framer)])
    m = run_scenario(scenario, progress=False, embeddings=args.embeddings,
                     base_settings=base)
    how = "copies the retrieval apps" if args.copy else "in its own words (control)"
    if args.aged:
        how += ", aged accounts" + ("" if args.rent else ", one /24 each")
    if args.mixed:
        how += f", {args.mixed} of its accounts aged"
    if args.rent:
        how += f", from rag-big's {framer['prefix']}.0/24"
    print(f"\n## Framing probe: calibration split, {args.hours:g} h, replay, default rules, "
          f"embeddings {'on' if args.embeddings else 'off'}; framer {how}")
    print("| campaign | accounts | acted on | first action after | completion tokens before "
          "the first refusal (all, if never refused) | in all |")
    print("|---|---|---|---|---|---|")
    for name, c in m["campaigns"].items():
        ttfa = c["time_to_first_action_s"]
        total = c["haul_total"]["tokens"]
        taken = c["haul_before_stop"]["tokens"] if c["acted"] else total
        print(f"| {name} | {c['accounts']} | {c['members_acted']} | "
              f"{'-' if ttfa is None else f'{ttfa / 60:.1f} min'} | {taken:,.0f} | "
              f"{total:,.0f} |")
    a = m["accounts"]
    refused = {n: p["accounts_blocked"] for n, p in m["populations"].items()
               if p["label"] != "attack" and p["accounts_blocked"]}
    print(f"\nbenign accounts acted on: {a['benign_acted']} of {a['benign']}: "
          f"{a['benign_acted_names']}; accounts refused by population: {refused or 'none'}")


if __name__ == "__main__":
    main()
