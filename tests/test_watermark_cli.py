"""`distillguard wm detect` and `wm keys` as a user runs them, with the real tokenizer."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest
import torch

from distillguard.config import Settings
from distillguard.watermark import cli
from distillguard.watermark.service import WatermarkService


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from distillguard.backends.model_cache import ensure_converted

    return AutoTokenizer.from_pretrained(str(ensure_converted()))


@pytest.fixture(scope="module")
def word_ids(tokenizer):
    """Token ids of whole lower-case words with a leading space, which re-tokenise to
    themselves when decoded text is read back."""
    ids = []
    for token, idx in tokenizer.get_vocab().items():
        word = token[1:]
        if token.startswith("Ġ") and word.isascii() and word.isalpha() and word.islower() \
                and len(word) > 2:
            ids.append(idx)
    return np.array(sorted(ids)[:3000])


@pytest.fixture
def settings(tmp_path):
    return Settings.load(env={}, data_dir=str(tmp_path / "data"))


@pytest.fixture
def shared_tokenizer(monkeypatch, tokenizer):
    """Hand the module's tokenizer to the CLI instead of loading it again (1-4 s)."""
    monkeypatch.setattr(cli, "_service", lambda args, create: WatermarkService.from_settings(
        args.settings, create=create, tokenizer=tokenizer))


def run(settings, *argv, stdin: str | None = None, monkeypatch=None) -> int:
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    args.settings = settings
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return args.func(args)


def watermarked_text(service, word_ids, tokenizer, account="acct", n=120, seed=0) -> str:
    sampler, _ = service.sampler_for(account)
    ctx = list(tokenizer(" the", add_special_tokens=False)["input_ids"])
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    for _ in range(n):
        lg = torch.Generator().manual_seed(ctx[-1])
        logits = torch.full((vocab,), float("-inf"))
        logits[word_ids] = torch.randn(len(word_ids), generator=lg) * 2.0
        ctx.append(sampler.sample_row(np.array(ctx), logits, False, g))
    return tokenizer.decode(ctx)


def test_detect_text_file_jsonl_and_stdin(settings, tokenizer, word_ids, tmp_path, capsys,
                                          monkeypatch):
    service = WatermarkService.from_settings(settings, tokenizer=tokenizer)
    marked = watermarked_text(service, word_ids, tokenizer)
    human = ("It was the best of times, it was the worst of times, it was the age of "
             "wisdom, it was the age of foolishness, it was the epoch of belief.")
    (tmp_path / "marked.txt").write_text(marked)
    with (tmp_path / "docs.jsonl").open("w") as fh:
        fh.write(json.dumps({"id": "a", "text": marked}) + "\n")
        fh.write(json.dumps({"id": "b", "text": human}) + "\n")

    assert run(settings, "wm", "detect", str(tmp_path / "marked.txt"),
               str(tmp_path / "docs.jsonl")) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    docs = tmp_path / "docs.jsonl"
    assert [x["source"] for x in lines] == [
        str(tmp_path / "marked.txt"), f"{docs}:1", f"{docs}:2"]
    assert lines[0]["p_value"] < 1e-6 and lines[0]["key_id"] == service.ring.active.key_id
    assert lines[1]["id"] == "a" and lines[1]["p_value"] < 1e-6
    assert lines[2]["id"] == "b" and lines[2]["p_value"] > 1e-3
    for stat in ("p_value", "p_value_best_key", "z_score", "tokens_scored",
                 "tokens_ignored_repeated", "cohort"):
        assert stat in lines[0]

    assert run(settings, "wm", "detect", "-", stdin=marked, monkeypatch=monkeypatch) == 0
    assert json.loads(capsys.readouterr().out)["p_value"] < 1e-6
    stdin_jsonl = json.dumps({"text": human}) + "\n"
    assert run(settings, "wm", "detect", "-", stdin=stdin_jsonl, monkeypatch=monkeypatch) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "-:1"


def test_nfkc_normalisation_undoes_fullwidth_letters(settings, tokenizer, word_ids, tmp_path,
                                                     capsys, shared_tokenizer):
    service = WatermarkService.from_settings(settings, tokenizer=tokenizer)
    marked = watermarked_text(service, word_ids, tokenizer, seed=4)
    fullwidth = marked.translate({c: c + 0xFEE0 for c in range(ord("a"), ord("z") + 1)})
    (tmp_path / "wide.txt").write_text(fullwidth)
    run(settings, "wm", "detect", str(tmp_path / "wide.txt"))
    assert json.loads(capsys.readouterr().out)["p_value"] > 1e-3
    run(settings, "wm", "detect", "--normalize", "NFKC", str(tmp_path / "wide.txt"))
    out = json.loads(capsys.readouterr().out)
    assert out["p_value"] < 1e-6 and out["normalized"] == "NFKC"


def test_unreadable_inputs_exit_non_zero_with_a_clear_message(settings, tmp_path, capsys,
                                                              shared_tokenizer):
    WatermarkService.from_settings(settings)  # create the key
    assert run(settings, "wm", "detect", str(tmp_path / "missing.txt")) == 2
    assert "missing.txt does not exist" in capsys.readouterr().err
    assert run(settings, "wm", "detect", str(tmp_path)) == 2
    assert "is a folder" in capsys.readouterr().err

    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00binary")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine text here"}\nnot json\n{"body": "x"}\n')
    code = run(settings, "wm", "detect", str(tmp_path / "bin.txt"), str(bad))
    captured = capsys.readouterr()
    assert code == 1
    assert "bin.txt: not UTF-8 text" in captured.err
    assert "bad.jsonl:2: not valid JSON" in captured.err
    assert "bad.jsonl:3: no string field `text`" in captured.err
    assert [json.loads(x)["source"] for x in captured.out.splitlines()] == [f"{bad}:1"]
    assert "Traceback" not in captured.err


def test_detect_without_any_key_explains(settings, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("hello")
    assert run(settings, "wm", "detect", str(tmp_path / "a.txt")) == 2
    assert "start the server once" in capsys.readouterr().err
    assert not (tmp_path / "data" / "watermark.key").exists()


def test_keys_list_and_rotate(settings, capsys):
    WatermarkService.from_settings(settings)
    assert run(settings, "wm", "keys") == 0
    listed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(k["key_id"], k["active"]) for k in listed] == [("wk1", True)]
    assert run(settings, "wm", "keys", "rotate") == 0
    captured = capsys.readouterr()
    listed = [json.loads(x) for x in captured.out.splitlines()]
    assert [(k["key_id"], k["active"]) for k in listed] == [("wk1", False), ("wk2", True)]
    assert "new active watermark key wk2" in captured.err
    assert all("secret" not in k for k in listed)
