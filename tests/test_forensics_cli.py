"""``distillguard forensics``: evidence report and record from the command line."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distillguard.config import Settings
from distillguard.forensics import cli as forensics_cli
from distillguard.watermark.service import WatermarkService

SECRET = "forensics-test-secret-0123456789abcdef"


def run(argv: list[str], data_dir: Path) -> int:
    parser = argparse.ArgumentParser(prog="distillguard")
    parser.add_argument("--config")
    parser.add_argument("--data-dir")
    sub = parser.add_subparsers(dest="command", required=True)
    forensics_cli.add_commands(sub)
    args = parser.parse_args(["--data-dir", str(data_dir), *argv])
    args.settings = Settings.load(env={}, data_dir=str(data_dir),
                                  watermark_master_secret=SECRET, watermark_cohorts=4)
    return args.func(args)


@pytest.fixture(scope="module")
def service():
    settings = Settings.load(env={}, watermark_master_secret=SECRET, watermark_cohorts=4,
                             watermark_delta=4.0, data_dir="/nonexistent")
    return WatermarkService.from_settings(settings, create=False)


@functools.lru_cache(maxsize=1)
def _word_ids(tokenizer) -> tuple[int, ...]:
    pieces = tokenizer.convert_ids_to_tokens(list(range(1000, 20000)))
    # "Ġword": a space then lowercase letters, which decode and re-encode to themselves.
    return tuple(i for i, p in zip(range(1000, 20000), pieces)
                 if p.startswith("\u0120") and p[1:].isalpha() and p[1:].islower()
                 and p[1:].isascii())


def word_tokens(tokenizer) -> np.ndarray:
    """Ids of plain ` word` tokens."""
    return np.array(_word_ids(tokenizer))


def watermarked_text(service, words: np.ndarray, account: str, n: int, seed: int) -> str:
    sampler, _ = service.sampler_for(account)
    gen = torch.Generator().manual_seed(seed)
    vocab = 49_152
    ids = [int(words[0])]
    logits = torch.full((vocab,), float("-inf"))
    index = torch.from_numpy(words)
    for _ in range(n):
        logits[index] = torch.randn(len(words), generator=gen)
        ids.append(sampler.sample_row(np.array(ids), logits, False, gen))
    return service.tokenizer.decode(ids)


def test_corpus_report_convicts_our_text_without_leaking_keys(service, tmp_path):
    words = word_tokens(service.tokenizer)
    corpus = tmp_path / "corpus.jsonl"
    with corpus.open("w") as fh:
        for d in range(4):
            fh.write(json.dumps({"text": watermarked_text(service, words, "mallory", 150,
                                                          d)}) + "\n")
    out = tmp_path / "report"
    assert run(["forensics", "corpus", str(corpus), "--out", str(out), "--null-keys", "20"],
               tmp_path / "data") == 0
    record = json.loads((out / "evidence.json").read_text())
    assert record["verdict"] == "learned from our outputs" and record["p_value"] < 1e-6
    (test,) = record["tests"]
    assert test["cohort"] == service.ring.active.cohort_of("mallory")
    assert test["tokens_scored"] > 300 and test["key_id"] in record["key_ids"]
    assert record["command"].startswith("distillguard --data-dir ")
    assert f"forensics corpus {corpus}" in record["command"]
    raw = (out / "evidence.json").read_text() + (out / "report.html").read_text()
    key = service.ring.active
    assert SECRET not in raw and key.secret.hex() not in raw
    assert key.partition_key("greenlist", test["cohort"]).hex() not in raw
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "Reproduce" in html


def test_corpus_of_human_text_is_cleared(tmp_path):
    licences = sorted(Path("/usr/share/common-licenses").glob("*"))[:3]
    if not licences:
        pytest.skip("no licence texts on this machine")
    out = tmp_path / "report"
    assert run(["forensics", "corpus", *map(str, licences), "--out", str(out),
                "--null-keys", "0"], tmp_path / "data") == 0
    record = json.loads((out / "evidence.json").read_text())
    assert record["verdict"] == "no evidence at this alpha"
    assert record["attribution"]["candidate_accounts"] is None or \
        not record["attribution"]["cohorts"][0]["flagged"]


def test_unreadable_input_is_a_clear_error(tmp_path, capsys):
    code = run(["forensics", "corpus", str(tmp_path / "missing.txt"), "--out",
                str(tmp_path / "r")], tmp_path / "data")
    assert code == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from distillguard.backends.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_reading_mode_refuses_watermarked_texts_without_a_reference(service, tmp_path,
                                                                     capsys, tiny):
    words = word_tokens(service.tokenizer)
    texts = tmp_path / "ours.jsonl"
    texts.write_text(json.dumps({"response": watermarked_text(service, words, "eve", 200,
                                                              1)}) + "\n")
    code = run(["forensics", "weights", str(tiny), "--texts", str(texts), "--reference",
                "none", "--out", str(tmp_path / "r")], tmp_path / "data")
    assert code == 2
    assert "needs a reference model" in capsys.readouterr().err


def test_weights_suspect_blackbox_and_reading_modes_run(service, tmp_path, tiny):
    words = word_tokens(service.tokenizer)
    texts = tmp_path / "ours.jsonl"
    texts.write_text(json.dumps({"response": watermarked_text(service, words, "eve", 60,
                                                              2)}) + "\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me a story.\nWhat is a cat?\n")
    out = tmp_path / "r"
    code = run(["forensics", "weights", str(tiny), "--texts", str(texts), "--reference",
                str(tiny), "--prompts", str(prompts), "--samples", "2", "--max-tokens",
                "16", "--null-keys", "5", "--filter-texts", str(texts), "--out", str(out)],
               tmp_path / "data")
    assert code == 0
    record = json.loads((out / "evidence.json").read_text())
    assert [t["test"] for t in record["tests"]] == ["reading_vs_reference", "blackbox"]
    # Only tuples after a context that occurs in our texts were scored.
    blackbox = record["tests"][1]
    assert blackbox["tokens_ignored_filter"] > 0
    assert any("Filter" in n for n in blackbox["notes"])
    # The suspect is its own reference: nothing differs, so nothing is evidence.
    assert record["verdict"] == "no evidence at this alpha"
    assert "--reference" in record["command"] and "--samples 2" in record["command"]
    assert f"--filter-texts {texts}" in record["command"]


def test_key_ids_of_a_rotated_ring_are_all_tried(tmp_path):
    data = tmp_path / "data"
    settings = Settings.load(env={}, data_dir=str(data), watermark_cohorts=2)
    svc = WatermarkService.from_settings(settings)
    svc.rotate()
    corpus = tmp_path / "c.txt"
    corpus.write_text("plain words written by a person " * 20)
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--data-dir")
    sub = parser.add_subparsers(dest="command")
    forensics_cli.add_commands(sub)
    args = parser.parse_args(["forensics", "corpus", str(corpus), "--out",
                              str(tmp_path / "r"), "--null-keys", "0"])
    args.settings = settings
    assert args.func(args) == 0
    record = json.loads((tmp_path / "r" / "evidence.json").read_text())
    assert record["key_ids"] == ["wk1", "wk2"]
    assert record["tests"][0]["keys_tried"] == 4
    digest = hashlib.sha256((data / "watermark.key").read_bytes()).hexdigest()
    assert digest not in json.dumps(record)


def test_endpoint_suspect_that_echoes_prompts_scores_nothing_from_them(
        live_server, tmp_path, monkeypatch):
    url, gateway = live_server()  # the echo backend repeats the prompt's words
    _, key = gateway.store.create_key("suspect-owner")
    monkeypatch.setenv("SUSPECT_KEY", key)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("alpha beta gamma delta epsilon zeta eta theta\n"
                       "one two three four five six seven eight nine ten\n")
    out = tmp_path / "r"
    code = run(["forensics", "endpoint", url + "/v1", "--model", "echo", "--api-key-env",
                "SUSPECT_KEY", "--prompts", str(prompts), "--samples", "2", "--null-keys",
                "5", "--out", str(out)], tmp_path / "data")
    assert code == 0
    record = json.loads((out / "evidence.json").read_text())
    (test,) = record["tests"]
    assert test["tokens_ignored_prompt"] > 0
    assert test["tokens_scored"] < test["tokens_total"] / 2
    assert record["suspect"]["kind"] == "endpoint"
    assert "--api-key-env SUSPECT_KEY" in record["command"]
    raw = (out / "evidence.json").read_text() + (out / "report.html").read_text()
    assert key not in raw


def test_logged_prompts_of_harvesting_accounts_get_the_supervised_test(service, tmp_path,
                                                                        tiny):
    from distillguard.telemetry.events import RequestEvent
    from distillguard.telemetry.store import open_store

    data = tmp_path / "data"
    store = open_store(Settings.load(env={}, data_dir=str(data)))
    _, record = service.sampler_for("harvester-7")
    store.write_events([
        RequestEvent(ts=1000.0 + i, request_id=f"r{i}", endpoint="/v1/chat/completions",
                     status=200, latency_ms=5.0, account="harvester-7",
                     prompt=f"user: Explain topic number {i} in detail.", watermark=record)
        for i in range(3)])
    store.close()
    out = tmp_path / "r"
    code = run(["forensics", "weights", str(tiny), "--accounts", "harvester-7",
                "--max-tokens", "12", "--null-keys", "3", "--out", str(out)], data)
    assert code == 0
    evidence = json.loads((out / "evidence.json").read_text())
    tests = {t["test"]: t for t in evidence["tests"]}
    assert set(tests) == {"blackbox", "supervised"}
    supervised = tests["supervised"]
    assert supervised["keys_tried"] == 1
    assert [k["cohort"] for k in supervised["per_key"]] == [record["cohort"]]
    assert evidence["p_value_correction"] == "Bonferroni over 2 tests"
    # A random tiny model never saw our outputs: no evidence.
    assert evidence["verdict"] == "no evidence at this alpha"
