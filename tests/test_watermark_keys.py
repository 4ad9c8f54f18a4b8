"""Keys owned by the server: creation (0600), rotation, cohorts, records without secrets."""

from __future__ import annotations

import json
import logging
import os
import stat

import numpy as np
import pytest
import torch

from distillguard.config import Secret, Settings
from distillguard.watermark.keys import KeyRing, KeyRingError
from distillguard.watermark.service import PlainSampler, WatermarkService

VOCAB = 3000


def make_settings(tmp_path, **overrides) -> Settings:
    return Settings.load(env={}, data_dir=str(tmp_path / "data"), **overrides)


def generate(sampler, n=150, seed=0) -> list[int]:
    ctx = [7, 8, 9]
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        lg = torch.Generator().manual_seed(ctx[-1] * 131 + ctx[-2])
        logits = torch.randn(VOCAB, generator=lg) * 2.5
        ctx.append(sampler.sample_row(np.array(ctx), logits, False, g))
    return ctx[3:]


def test_first_start_creates_a_private_key_file_and_never_logs_the_secret(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    service = WatermarkService.from_settings(make_settings(tmp_path))
    path = tmp_path / "data" / "watermark.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret_hex = json.loads(path.read_text())["keys"][0]["secret"]
    _, record = service.sampler_for("acct")
    shown = caplog.text + repr(service.ring.active) + json.dumps(record) + json.dumps(
        service.keys())
    assert secret_hex not in shown
    assert bytes.fromhex(secret_hex).decode("latin-1") not in shown
    # a second start reads the same key
    again = WatermarkService.from_settings(make_settings(tmp_path))
    assert again.ring.active.key_id == service.ring.active.key_id


def test_loosened_key_file_permissions_are_tightened(tmp_path):
    WatermarkService.from_settings(make_settings(tmp_path))
    path = tmp_path / "data" / "watermark.key"
    os.chmod(path, 0o644)
    WatermarkService.from_settings(make_settings(tmp_path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_detection_without_a_key_says_how_to_get_one(tmp_path):
    with pytest.raises(KeyRingError, match="watermark_master_secret"):
        WatermarkService.from_settings(make_settings(tmp_path), create=False)


def test_rotation_embeds_with_the_new_key_and_still_detects_the_old(tmp_path):
    settings = make_settings(tmp_path)
    server = WatermarkService.from_settings(settings)
    old_sampler, old_record = server.sampler_for("acct-1")
    old_text = generate(old_sampler)

    # rotation from another process (the CLI) reaches the running server
    WatermarkService.from_settings(settings).rotate()
    server._next_reload_check = 0.0
    new_sampler, new_record = server.sampler_for("acct-1")
    assert new_record["key_id"] != old_record["key_id"]
    new_text = generate(new_sampler, seed=1)

    for text, record in ((old_text, old_record), (new_text, new_record)):
        found = server.detect_tokens(text)
        assert found["p_value"] < 1e-6
        assert (found["key_id"], found["cohort"]) == (record["key_id"], record["cohort"])
        assert found["keys_tried"] == 2 * 16
    assert [k["active"] for k in server.keys()] == [False, True]


def test_settings_secret_is_used_without_a_key_file_and_cannot_rotate_itself(tmp_path):
    secret = Secret("an-old-secret-0123456789,the-new-secret-0123456789")
    settings = make_settings(tmp_path, watermark_master_secret=secret)
    service = WatermarkService.from_settings(settings)
    assert not (tmp_path / "data" / "watermark.key").exists()
    assert len(service.keys()) == 2
    with pytest.raises(KeyRingError, match="watermark_master_secret"):
        service.rotate()
    # the same setting gives the same key ids on every start
    assert WatermarkService.from_settings(settings).keys() == service.keys()
    with pytest.raises(KeyRingError, match="16 characters"):
        KeyRing.from_setting("short", 4)


def test_accounts_map_to_cohorts_and_detection_names_the_cohort(tmp_path):
    service = WatermarkService.from_settings(make_settings(tmp_path, watermark_cohorts=4))
    key = service.ring.active
    cohorts = {key.cohort_of(f"acct-{i}") for i in range(200)}
    assert cohorts == {0, 1, 2, 3}
    assert key.cohort_of("acct-5") == key.cohort_of("acct-5")
    for account in ("acct-1", "acct-2", "acct-3"):
        sampler, record = service.sampler_for(account)
        found = service.detect_tokens(generate(sampler, seed=int(account[-1])))
        assert found["cohort"] == record["cohort"] == key.cohort_of(account)
        assert found["p_value"] >= found["p_value_best_key"]


def test_record_reproduces_detection_exactly(tmp_path):
    service = WatermarkService.from_settings(make_settings(tmp_path))
    sampler, record = service.sampler_for("acct", strength=2.0)
    assert record["params"]["strength"] == 2.0
    assert set(record) == {"version", "scheme", "key_id", "cohort", "cohorts", "params",
                           "tokens"}
    assert record["tokens"] == {"tokens": 0, "keyed": 0, "active": 0}
    text = generate(sampler)
    exact = service.detect_tokens(text, record=json.loads(json.dumps(record)))
    assert exact["keys_tried"] == 1 and exact["correction"] == "none"
    assert exact["p_value"] == exact["p_value_best_key"] < 1e-10


def test_strength_below_one_cannot_weaken_the_watermark(tmp_path):
    service = WatermarkService.from_settings(make_settings(tmp_path))
    _, record = service.sampler_for("acct", strength=0.1)
    assert record["params"]["strength"] == 1.0


def test_scheme_none_gives_the_plain_sampler_and_no_record(tmp_path):
    service = WatermarkService.from_settings(make_settings(tmp_path, watermark_scheme="none"))
    sampler, record = service.sampler_for("acct")
    assert isinstance(sampler, PlainSampler) and record is None


def test_scheme_parameters_come_from_settings(tmp_path):
    settings = make_settings(tmp_path, watermark_scheme="greenlist", watermark_gamma=0.5,
                             watermark_delta=4.0, watermark_context_width=3,
                             watermark_seeding="min")
    _, record = WatermarkService.from_settings(settings).sampler_for("a")
    assert record["params"] == {"gamma": 0.5, "delta": 4.0, "context_width": 3,
                                "seeding": "min", "strength": 1.0, "min_temperature": 0.7,
                                "min_top_p": 0.9}
    settings = make_settings(tmp_path, watermark_scheme="exponential")
    _, record = WatermarkService.from_settings(settings).sampler_for("a")
    assert record["scheme"] == "exponential"
    with pytest.raises(ValueError, match="greenlist"):
        WatermarkService.from_settings(make_settings(tmp_path, watermark_scheme="bogus"))


def test_a_changed_cohort_count_applies_to_keys_created_after_it(tmp_path):
    WatermarkService.from_settings(make_settings(tmp_path, watermark_cohorts=4))
    service = WatermarkService.from_settings(make_settings(tmp_path, watermark_cohorts=8))
    service.rotate()
    assert [k["cohorts"] for k in service.keys()] == [4, 8]
    assert service.detect_tokens([1, 2, 3])["keys_tried"] == 12
