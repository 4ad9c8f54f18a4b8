"""Distiller scrubs on the tiny random-weight model: each really changes data or model."""

from __future__ import annotations

import json

import pytest
import torch

from distillguard.backends.tiny import create_tiny_model
from distillguard.cli import main as cli_main
from distillguard.distill.scrub import (
    NEUTRALISER_FILE,
    Neutraliser,
    build_neutraliser,
    clean_finetune,
    estimate_pairs,
    paraphrase_pairs,
)
from distillguard.distill.train import Pair, TrainError, train_student
from distillguard.forensics.suspects import WeightsSuspect

HARVEST = [Pair(f"Say the colour number {i}.", f"The colour is blue, number {i}. Blue!")
           for i in range(10)]
CLEAN = [Pair(f"Name a fruit, {i}.", f"An apple is a fruit; so is a pear, {i}.")
         for i in range(10)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_estimate_keeps_pairs_over_represented_against_clean_text():
    harvest = [[1, 2, 1, 2, 1, 2, 5, 6], [1, 2, 7, 8]]
    clean = [[1, 3, 1, 3, 1, 3, 1, 2, 5, 6, 5, 6, 5, 6]]
    est = estimate_pairs(harvest, clean, min_count=2)
    assert est.get(1) == [2]  # 4/4 after token 1 here, 1/4 in clean text
    assert 5 not in est  # (5, 6) is as common in clean text
    assert 7 not in est  # seen once: below min_count
    assert estimate_pairs(harvest, clean, min_count=1).get(7) == [8]


def test_neutraliser_lowers_exactly_its_pairs_and_round_trips(tmp_path):
    n = Neutraliser(3.0, {4: [1, 2]})
    scores = torch.zeros(2, 6)
    n(torch.tensor([[9, 4], [9, 5]]), scores)
    assert scores[0].tolist() == [0, -3, -3, 0, 0, 0] and scores[1].abs().sum() == 0
    logits = torch.zeros(3, 6)
    n.adjust([4, 0, 4], logits)
    assert logits[:, 1].tolist() == [-3, 0, -3]
    n.save(tmp_path)
    back = Neutraliser.load(tmp_path)
    assert back.pairs == {4: [1, 2]} and back.delta == 3.0 and back.size == 2
    assert Neutraliser.load(tmp_path / "missing") is None
    (tmp_path / NEUTRALISER_FILE).write_text("{}")
    with pytest.raises(TrainError):
        Neutraliser.load(tmp_path)


def test_a_neutralised_student_decodes_differently(tiny, tmp_path):
    import shutil

    raw = WeightsSuspect(tiny, neutralise=False)
    prompts = ["Say the colour number 3.", "Name a fruit."]
    before = raw.generate(prompts, max_tokens=12, temperature=0, progress=None)
    tok = raw.tokenizer
    # Penalise every step the raw model took: greedy decoding must leave that path.
    from distillguard.distill.train import prompt_token_ids

    pairs: dict[int, list[int]] = {}
    for p, text in zip(prompts, before):
        ids = prompt_token_ids(tok, p) + tok(text, add_special_tokens=False)["input_ids"]
        start = len(prompt_token_ids(tok, p))
        for a, b in zip(ids[start - 1:], ids[start:]):
            pairs.setdefault(a, []).append(b)
    folder = tmp_path / "student"
    shutil.copytree(tiny, folder)
    Neutraliser(50.0, pairs).save(folder)
    suspect = WeightsSuspect(folder)
    assert suspect.describe()["neutraliser_pairs"] > 0
    after = suspect.generate(prompts, max_tokens=12, temperature=0, progress=None)
    assert after != before
    text_ids = [tok(before[0], add_special_tokens=False)["input_ids"]]
    assert suspect.predictions(text_ids, progress=None) != raw.predictions(
        text_ids, progress=None)
    # neutralise=False reads the raw weights.
    assert WeightsSuspect(folder, neutralise=False).generate(
        prompts, max_tokens=12, temperature=0, progress=None) == before


def test_clean_finetune_moves_the_student_towards_the_clean_text(tiny, tmp_path):
    distilled = tmp_path / "distilled"
    train_student(HARVEST, distilled, student=str(tiny), size="xs", device="cpu",
                  epochs=3, lr=3e-3, heldout=0.0, progress=None)
    scrubbed = tmp_path / "scrubbed"
    result = clean_finetune(distilled, CLEAN, scrubbed, size="xs", epochs=3, lr=3e-3,
                            device="cpu", heldout_pairs=CLEAN[:3], progress=None)
    # It starts from the distilled student and learns the clean text.
    assert result.student == str(distilled)
    assert result.heldout_loss_after < result.heldout_loss_before - 0.1
    from safetensors.torch import load_file

    a = load_file(distilled / "model.safetensors")
    b = load_file(scrubbed / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainError):
        clean_finetune(tmp_path / "nothing", CLEAN, tmp_path / "x", progress=None)


def test_paraphrase_rewrites_every_response_and_targeting_steers_it(tiny):
    para = WeightsSuspect(tiny, neutralise=False)
    res = paraphrase_pairs(HARVEST[:4], para, max_tokens=16, progress=None)
    assert [p.prompt for p in res.pairs] == [p.prompt for p in HARVEST[:4]]
    assert res.rewritten + res.kept_original == 4
    changed = [p for p, q in zip(HARVEST, res.pairs) if p.response != q.response]
    assert len(changed) == res.rewritten > 0
    # Targeted: penalise whatever the untargeted paraphrase wrote.
    tok = para.tokenizer
    avoid = build_neutraliser(tok, [p.response for p in res.pairs], ["x"], delta=50.0,
                              min_count=1, ratio=1.0)
    assert avoid.size > 0
    targeted = paraphrase_pairs(HARVEST[:4], para, max_tokens=16, avoid=avoid,
                                progress=None)
    assert [p.response for p in targeted.pairs] != [p.response for p in res.pairs]
    with pytest.raises(TrainError):
        paraphrase_pairs(HARVEST[:1], para, template="no placeholder", progress=None)


def _jsonl(path, pairs):
    path.write_text("".join(json.dumps({"prompt": p.prompt, "response": p.response}) + "\n"
                            for p in pairs))
    return path


def test_cli_scrubs(tiny, tmp_path, capsys):
    harvest = _jsonl(tmp_path / "harvest.jsonl", HARVEST)
    clean = _jsonl(tmp_path / "clean.jsonl", CLEAN)
    out = tmp_path / "student"
    assert cli_main(["distill", "train", str(harvest), "--out", str(out), "--student",
                     str(tiny), "--size", "xs", "--device", "cpu", "--epochs", "1",
                     "--clean-finetune", str(clean), "--clean-epochs", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["clean_finetune"]["steps"] > 0
    assert (out / "before-scrub" / "config.json").is_file() and (out / "config.json").is_file()

    para = tmp_path / "para.jsonl"
    assert cli_main(["distill", "paraphrase", str(harvest), "--out", str(para),
                     "--paraphraser", str(tiny), "--max-tokens", "8", "--device", "cpu",
                     "--targeted", str(clean)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in para.read_text().splitlines()]
    assert len(rows) == len(HARVEST) and summary["rewritten"] + summary["kept_original"] == 10
    assert summary["targeted_pairs"] > 0
    assert any(r["response"] != p.response for r, p in zip(rows, HARVEST))

    assert cli_main(["distill", "neutralise", str(out), "--harvest", str(harvest),
                     "--clean", str(clean)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["pairs"] > 0 and (out / NEUTRALISER_FILE).is_file()
    assert cli_main(["distill", "neutralise", str(tmp_path / "none"), "--harvest",
                     str(harvest), "--clean", str(clean)]) == 2
