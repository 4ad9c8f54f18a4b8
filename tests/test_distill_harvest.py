"""Harvest through an in-process gateway with the official openai SDK."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from distillguard.distill.harvest import (
    HarvestError,
    KeySpec,
    done_prompts,
    harvest,
    read_keys_file,
)
from distillguard.distill.prompts import iter_json_array, iter_sharegpt, read_prompt_file


def factory_for(harness):
    def make(secret: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url="http://gateway/v1", api_key=secret, max_retries=0,
            http_client=httpx.AsyncClient(transport=harness.transport,
                                          base_url="http://gateway"))
    return make


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_harvest_writes_pairs_and_resumes_without_duplicates(harness_factory, tmp_path):
    h = await harness_factory()
    keys = [KeySpec(h.key("alice"), "alice"), KeySpec(h.key("bob"), "bob")]
    out = tmp_path / "pairs.jsonl"
    prompts = [f"tell me about topic number {i}" for i in range(6)]
    first = await harvest(prompts[:4], keys, out, model="echo", concurrency=3,
                          client_factory=factory_for(h), progress=None)
    assert first.harvested == 4 and first.failed == 0
    second = await harvest(prompts, keys, out, model="echo", concurrency=3,
                           client_factory=factory_for(h), progress=None)
    assert second.skipped_done == 4 and second.harvested == 2
    records = lines(out)
    assert sorted(r["prompt"] for r in records) == sorted(prompts)
    assert all(r["response"] and r["model"] == "echo" for r in records)
    assert {r["account"] for r in records} <= {"alice", "bob"}
    assert all(r["usage"]["completion_tokens"] > 0 for r in records)
    text = out.read_text()
    assert keys[0].secret not in text and keys[1].secret not in text
    # The gateway saw the requests under the harvesting accounts.
    assert {e.account for e in h.events()} == {"alice", "bob"}


async def test_harvest_survives_a_rejected_key(harness_factory, tmp_path):
    h = await harness_factory()
    keys = [KeySpec("sk-not-a-real-key-000000000000"), KeySpec(h.key("carol"), "carol")]
    out = tmp_path / "pairs.jsonl"
    summary = await harvest([f"prompt {i}" for i in range(5)], keys, out, model="echo",
                            concurrency=2, client_factory=factory_for(h), progress=None)
    assert summary.keys_retired == [0]
    assert summary.harvested == 5 and summary.failed == 0
    assert {r["key_index"] for r in lines(out)} == {1}


async def test_harvest_fails_clearly_when_every_key_is_rejected(harness_factory, tmp_path):
    h = await harness_factory()
    with pytest.raises(HarvestError, match="every key was rejected"):
        await harvest(["a prompt"], [KeySpec("sk-bad-key-1111111111111111")],
                      tmp_path / "x.jsonl", model="echo", client_factory=factory_for(h),
                      progress=None)


def test_a_line_cut_by_a_crash_is_dropped_so_appending_stays_valid(tmp_path):
    out = tmp_path / "pairs.jsonl"
    out.write_text(json.dumps({"prompt": "done", "response": "x"}) + "\n"
                   + '{"prompt": "half-writ')
    assert done_prompts(out) == {"done"}
    assert out.read_text().endswith("}\n")


def test_keys_file_and_prompt_file(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# harvesters\nsk-aaa\nbob sk-bbb\n")
    specs = read_keys_file(keys)
    assert [(k.label, k.secret) for k in specs] == [(None, "sk-aaa"), ("bob", "sk-bbb")]
    assert "sk-bbb" not in repr(specs)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "one"}\n\n{"prompt": "two"}\n')
    assert read_prompt_file(prompts) == ["one", "two"]


def test_truncated_json_array_is_read_record_by_record(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[\n {"id": "a", "conversations": [{"from": "human", "value": '
                    '"first question?"}, {"from": "gpt", "value": "answer"}]},\n'
                    ' {"id": "b", "conversations": [{"from": "human", "value": "sec')
    assert [r["id"] for r in iter_json_array(path)] == ["a"]
    (ex,) = list(iter_sharegpt(path))
    assert (ex.prompt, ex.answer) == ("first question?", "answer")


def test_sharegpt_prompts_come_from_the_installed_package():
    first = [ex.prompt for _, ex in zip(range(3), iter_sharegpt())]
    assert len(first) == 3 and all(len(p) >= 8 for p in first)


def run_cli(argv: list[str], settings) -> int:
    import argparse

    from distillguard.distill import cli as distill_cli

    parser = argparse.ArgumentParser(prog="distillguard")
    sub = parser.add_subparsers(dest="command", required=True)
    distill_cli.add_commands(sub)
    args = parser.parse_args(argv)
    args.settings = settings
    return args.func(args)


def test_cli_harvest_against_a_live_gateway(live_server, tmp_path, capsys, settings):
    url, gateway = live_server()
    _, key = gateway.store.create_key("dave")
    keys = tmp_path / "keys.txt"
    keys.write_text(f"dave {key}\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt here\nsecond prompt here\n")
    out = tmp_path / "pairs.jsonl"
    argv = ["distill", "harvest", "--base-url", url + "/v1", "--keys-file", str(keys),
            "--prompts", str(prompts), "--out", str(out), "--concurrency", "2"]
    assert run_cli(argv, settings) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["harvested"] == 2 and summary["failed"] == 0
    assert run_cli(argv, settings) == 0  # resumes: nothing left to ask
    assert json.loads(capsys.readouterr().out)["skipped_done"] == 2
    assert [r["account"] for r in lines(out)] == ["dave", "dave"]
    assert key not in out.read_text()


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys, settings):
    assert run_cli(["distill", "train", str(tmp_path / "none.jsonl"), "--out",
                    str(tmp_path / "o")], settings) == 2
    assert "cannot read pairs" in capsys.readouterr().err
    assert run_cli(["distill", "harvest", "--base-url", "http://127.0.0.1:9/v1",
                    "--prompts", str(tmp_path / "none.txt"), "--out",
                    str(tmp_path / "o.jsonl")], settings) == 2
    assert "cannot read prompts" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("a prompt\n")
    assert run_cli(["distill", "harvest", "--base-url", "http://127.0.0.1:9/v1",
                    "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")],
                   settings) == 2
    assert "no API key" in capsys.readouterr().err
