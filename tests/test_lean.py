"""A lean install (no `local` extra) serves upstream and detects watermarks without torch;
``distillguard --help`` imports no command module."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import textwrap
import zipfile

import pytest

from distillguard import cli

# Run first in each child: any import of these fails, as in a venv without them.
BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    HEAVY = {"torch", "transformers", "gguf", "accelerate", "matplotlib"}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in HEAVY:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Blocker())
""")


def run_blocked(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=120)


def test_help_imports_no_command_module():
    done = run_blocked("""
        import sys
        from distillguard import cli
        try:
            cli.main(["--help"])
        except SystemExit:
            pass
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"numpy", "scipy"}
                       or m.endswith(".cli") and m != "distillguard.cli")
        print("HEAVY", heavy)
    """)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert "wm " in done.stdout and "forensics" in done.stdout  # listed all the same


def test_command_table_matches_what_the_modules_register():
    for module in cli.COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(module).add_commands(sub)
        registered = {a.dest: a.help for a in sub._choices_actions}
        listed = {name: text for name, (mod, text) in cli.COMMANDS.items() if mod == module}
        assert registered == listed, module


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    import distillguard

    assert capsys.readouterr().out == f"distillguard {distillguard.__version__}\n"
    assert distillguard.__version__ not in {"", "0+unknown"}


def test_upstream_gateway_serves_without_torch(tmp_path):
    done = run_blocked("""
        import asyncio, sys
        import httpx
        from distillguard.config import Settings
        from distillguard.gateway.app import build_app
        from distillguard.testing.fake_upstream import FakeUpstream

        async def main():
            with FakeUpstream() as upstream:
                settings = Settings.load(env={}, backend="upstream", data_dir=sys.argv[1],
                                         upstream_url=upstream.url)
                app = build_app(settings)
                async with app.router.lifespan_context(app):
                    _, key = app.state.runtime.store.create_key("alice")
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(transport=transport, base_url="http://g",
                            headers={"authorization": f"Bearer {key}"}) as http:
                        r = await http.post("/v1/chat/completions", json={
                            "model": "fake-model", "max_tokens": 4,
                            "messages": [{"role": "user", "content": "hi"}]})
                        print("STATUS", r.status_code, r.json()["choices"][0]["message"])
        asyncio.run(main())
        print("TORCH", "torch" in sys.modules)
    """, str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "STATUS 200" in done.stdout and "TORCH False" in done.stdout


def test_watermark_detector_without_torch_agrees_with_the_full_install(tmp_path):
    import numpy as np

    from distillguard.config import Settings
    from distillguard.watermark.service import WatermarkService

    secret = "lean-install-test-secret-0123456789"
    ids = [int(i) for i in np.random.default_rng(5).integers(0, 49152, size=300)]
    settings = Settings.load(env={}, data_dir=str(tmp_path), watermark_master_secret=secret)
    full = WatermarkService.from_settings(settings).detect_tokens(ids)
    done = run_blocked("""
        import json, sys
        from distillguard.config import Settings
        from distillguard.watermark.service import WatermarkService
        settings = Settings.load(env={}, data_dir=sys.argv[1],
                                 watermark_master_secret=sys.argv[2])
        result = WatermarkService.from_settings(settings).detect_tokens(json.loads(sys.argv[3]))
        print("RESULT", json.dumps({k: result[k] for k in ("p_value", "key_id", "cohort")}))
        print("TORCH", "torch" in sys.modules)
    """, str(tmp_path), secret, json.dumps(ids))
    assert done.returncode == 0, done.stderr
    lean = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert lean == {k: full[k] for k in ("p_value", "key_id", "cohort")}
    assert "TORCH False" in done.stdout


@pytest.mark.slow
def test_lean_tokenizer_gives_transformers_ids(tmp_path):
    from transformers import AutoTokenizer

    from distillguard.backends.model_cache import ensure_converted

    folder = ensure_converted()
    texts = ["Name three primary colours.", "  émigré naïve café ☕ 1,234.5\n\tdone",
             "def f(x):\n    return x**2  # ok"]
    want = [AutoTokenizer.from_pretrained(str(folder))(t, add_special_tokens=False)
            ["input_ids"] for t in texts]
    done = run_blocked("""
        import json, sys
        from pathlib import Path
        from distillguard.watermark.service import load_tokenizer
        tok = load_tokenizer(Path(sys.argv[1]))
        print("IDS", json.dumps([tok(t, add_special_tokens=False)["input_ids"]
                                 for t in json.loads(sys.argv[2])]))
    """, str(folder), json.dumps(texts))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.split("IDS ", 1)[1]) == want


def test_wheel_has_py_typed_and_license(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-"
                            "isolation", "-q", "-w", str(tmp_path), str(root)],
                           capture_output=True, text=True, timeout=300)
    if built.returncode != 0 and "setuptools" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr[-200:]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("distillguard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "distillguard/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA")))
    assert b"License-Expression: Apache-2.0" in metadata
    core = [line for line in metadata.decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [line for line in core if any(h in line for h in ("torch", "transformers",
                                                                    "gguf", "matplotlib"))]
