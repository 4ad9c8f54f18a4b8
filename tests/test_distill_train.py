"""Student training on a tiny random-weight model: loss falls, checkpoints, resume."""

from __future__ import annotations

import json

import pytest
import torch

from distillguard.backends.tiny import create_tiny_model
from distillguard.distill.train import (
    Pair,
    StudentRunner,
    TrainError,
    encode_pairs,
    read_pairs,
    train_student,
)

TOY = [Pair(f"Say the colour number {i}.", f"The colour is blue, number {i}. Blue!")
       for i in range(14)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("size", ["xs", pytest.param("full", marks=pytest.mark.slow)])
def test_training_reduces_loss_and_writes_checkpoints(tiny, tmp_path, size):
    out = tmp_path / "student"
    result = train_student(TOY, out, student=str(tiny), size=size, device="cpu",
                           epochs=6, batch_size=4, lr=3e-3, heldout=0.15, progress=None)
    assert result.examples_heldout == 2 and result.examples_train == 12
    assert result.train_loss_last < result.train_loss_first
    assert result.train_loss_after < result.train_loss_first
    assert result.heldout_loss_after < result.heldout_loss_before
    ckpts = sorted(p.name for p in out.glob("checkpoint-*.pt"))
    assert len(ckpts) == 2 and f"checkpoint-{result.steps}.pt" in ckpts  # keeps the last 2
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    saved = json.loads((out / "distill_train.json").read_text())
    assert saved["heldout_loss_after"] == result.heldout_loss_after


def test_resume_continues_from_the_newest_checkpoint(tiny, tmp_path):
    out = tmp_path / "student"
    first = train_student(TOY, out, student=str(tiny), size="xs", device="cpu", epochs=1,
                          batch_size=4, progress=None)
    resumed = train_student(TOY, out, student=str(tiny), size="xs", device="cpu",
                            epochs=2, batch_size=4, resume=True, progress=None)
    assert resumed.steps == 2 * first.steps
    # Only the steps after the checkpoint ran in the second call.
    assert resumed.checkpoints == [str(out / f"checkpoint-{resumed.steps}.pt")]


def test_top_block_training_sees_the_same_model_as_a_full_pass(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    tok = AutoTokenizer.from_pretrained(str(tiny))
    ex = encode_pairs(tok, TOY[:3])
    with torch.no_grad():
        full, n_full = StudentRunner(model, 0, "cpu").loss(ex)
        top, n_top = StudentRunner(model, 1, "cpu").loss(ex)
    assert n_full == n_top > 0
    assert float(full) == pytest.approx(float(top), rel=1e-5)


@pytest.mark.slow
def test_fresh_student_with_the_teachers_tokenizer(tmp_path):
    result = train_student(TOY, tmp_path / "fresh", student="fresh", size="xs",
                           device="cpu", epochs=3, batch_size=4, progress=None)
    assert result.train_loss_last < result.train_loss_first


def test_bad_inputs_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(TrainError, match="bad.jsonl:1"):
        read_pairs([bad])
    with pytest.raises(TrainError, match="unknown size"):
        train_student(TOY, tmp_path / "o", size="huge", progress=None)
