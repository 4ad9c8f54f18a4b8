"""Settings are checked when they are read: one line names the setting, value and range."""

from __future__ import annotations

import subprocess
import sys

import pytest

from distillguard.config import SETTINGS, Settings, SettingsError

BAD = [
    ("port", -5, "setting 'port' = -5: must be between 1 and 65535"),
    ("port", 70000, "setting 'port' = 70000: must be between 1 and 65535"),
    ("detection_interval", 0, "setting 'detection_interval' = 0.0: must be at least 0.1"),
    ("detection_interval", 0.01, "must be at least 0.1"),
    ("max_n", 0, "setting 'max_n' = 0: must be at least 1"),
    ("store", "mongo", "setting 'store' = 'mongo': must be one of postgres, sqlite"),
    ("backend", "vllm", "setting 'backend' = 'vllm': must be one of echo, local, upstream"),
    ("log_level", "loud", "must be one of debug, info, warning, error"),
    ("rate_store", "memcached", "setting 'rate_store' = 'memcached': must be one of memory, "
     "redis"),
    ("watermark_scheme", "rot13", "must be one of none, exponential, greenlist"),
    ("watermark_seeding", "right", "must be one of left, min"),
    ("watermark_normalize", "NFD", "must be one of '', NFC, NFKC"),
    ("event_batch_size", 0, "setting 'event_batch_size' = 0: must be at least 1"),
    ("event_queue_size", -1, "must be at least 1"),
    ("local_max_batch", 0, "must be at least 1"),
    ("watermark_context_width", 17, "must be between 0 and 16"),
    ("watermark_context_width", -1, "must be between 0 and 16"),
    ("watermark_gamma", 0, "must be above 0 and at most 0.99"),
    ("watermark_delta", 0, "must be above 0"),
    ("upstream_timeout", 0, "must be above 0"),
    ("event_flush_interval", float("nan"), "must be a number"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD)
def test_bad_value_is_refused_at_load_with_one_line(name, value, message):
    with pytest.raises(SettingsError) as info:
        Settings.load(env={}, **{name: value})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "value", "message"), BAD)
def test_bad_value_is_refused_by_replace(name, value, message):
    with pytest.raises(SettingsError, match="must be"):
        Settings.load(env={}).replace(**{name: value})


def test_environment_and_file_name_their_source(tmp_path):
    with pytest.raises(SettingsError, match=r"'max_n' = 0: must be at least 1 "
                       r"\(from DISTILLGUARD_MAX_N\)"):
        Settings.load(env={"DISTILLGUARD_MAX_N": "0"})
    file = tmp_path / "dg.toml"
    file.write_text('store = "mongo"\n')
    with pytest.raises(SettingsError, match=r"'store' = 'mongo'.*\(from .*dg\.toml\)"):
        Settings.load(file, env={})


def test_defaults_and_edges_are_accepted():
    settings = Settings.load(env={}, port=1, max_n=1, detection_interval=0.1,
                             watermark_context_width=16, watermark_normalize="NFKC",
                             store="postgres", backend="echo", rate_store="redis",
                             watermark_scheme="none", event_batch_size=1)
    assert settings.port == 1 and settings.watermark_context_width == 16
    for setting in SETTINGS:
        assert setting.problem(setting.default) is None, setting.name


def test_serve_with_a_bad_port_exits_with_one_line_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "distillguard.cli", "--data-dir",
                           str(tmp_path), "serve", "--port", "-5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "distillguard: setting 'port' = -5: must be between 1 and 65535\n"
    assert done.stdout == ""
    assert not list(tmp_path.iterdir())  # refused before anything was created
