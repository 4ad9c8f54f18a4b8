"""One registry shape for every plug point: every name loads, plugins come from entry
points, and tests register only temporarily."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from distillguard.backends.base import BACKENDS, backend_from_settings
from distillguard.config import Settings, SettingsError
from distillguard.detection.signals import SIGNALS, create_signal
from distillguard.policy.ratelimit import RATE_STORES, RateStore
from distillguard.registry import Registry, RegistryError
from distillguard.simulate.populations import POPULATIONS
from distillguard.telemetry.store import STORES, Store, StoreBundle
from distillguard.watermark.registry import SCHEMES

REGISTRIES = {"backends": BACKENDS, "stores": STORES, "rate_stores": RATE_STORES,
              "signals": SIGNALS, "watermark_schemes": SCHEMES, "strategies": POPULATIONS}


def test_every_registry_has_its_builtins_and_entry_point_group():
    assert BACKENDS.names() == ["echo", "local", "upstream"]
    assert STORES.names() == ["postgres", "sqlite"]
    assert RATE_STORES.names() == ["memory", "redis"]
    assert SCHEMES.names() == ["exponential", "greenlist"]
    assert {"elicitation", "regularity"} <= set(SIGNALS.names())
    assert POPULATIONS.get("bulk_harvester").label == "attack"
    assert POPULATIONS.get("casual").label == "benign"
    for group, registry in REGISTRIES.items():
        assert registry.group == f"distillguard.{group}"


@pytest.mark.parametrize("name", BACKENDS.names())
def test_every_backend_builds(name, tmp_path):
    settings = Settings.load(env={}, data_dir=str(tmp_path), backend=name,
                             upstream_url="http://127.0.0.1:9/v1", upstream_models="m=m")
    backend = backend_from_settings(settings)
    assert callable(backend.complete) and callable(backend.stream)


@pytest.mark.parametrize("name", STORES.names())
def test_every_store_bundle_opens_events_and_actions(name, request, tmp_path):
    dsn = request.getfixturevalue("pg_dsn") if name == "postgres" else ""
    settings = Settings.load(env={}, data_dir=str(tmp_path), store=name, postgres_dsn=dsn)
    bundle = STORES.get(name)
    events = bundle.open_events(settings)
    actions = bundle.open_actions(settings)
    signup = bundle.open_signup(settings)
    try:
        assert isinstance(events, Store) and events.count_events() == 0
        assert actions.actions() == []
        assert signup.name == name
    finally:
        events.close()
        actions.close()
        signup.close()


@pytest.mark.parametrize("name", RATE_STORES.names())
async def test_every_rate_store_builds(name):
    store = RATE_STORES.get(name)(Settings.load(env={}, rate_store=name))
    assert isinstance(store, RateStore)
    await store.close()


@pytest.mark.parametrize("name", SIGNALS.names())
def test_every_signal_builds(name):
    assert create_signal(name).name == name


@pytest.mark.parametrize("name", SCHEMES.names())
def test_every_scheme_builds(name):
    scheme = SCHEMES.get(name)()
    assert scheme.name == name and scheme.params


@pytest.mark.parametrize("name", POPULATIONS.names())
def test_every_population_kind_loads(name):
    cls = POPULATIONS.get(name)
    assert cls.kind == name and cls.label in {"benign", "heavy", "attack"}


def test_unknown_and_taken_names_are_clear():
    registry: Registry[int] = Registry("widget")
    registry.register("a", 1)
    with pytest.raises(RegistryError, match=r"unknown widget 'b'; known: a"):
        registry.get("b")
    with pytest.raises(ValueError, match="a widget named 'a' is already registered"):
        registry.register("a", 2)
    with registry.temporarily("b", 3):
        assert registry.get("b") == 3
    assert registry.names() == ["a"]
    with pytest.raises(SettingsError, match="'store' = 'mongo': must be one of postgres, "
                       "sqlite"):
        Settings.load(env={}, store="mongo")


def test_lazy_entries_import_on_first_get_and_name_a_missing_extra():
    registry: Registry[object] = Registry("thing", missing_extra={"gone": "local"})
    registry.register_lazy("json_dumps", "json:dumps")
    registry.register_lazy("gone", "distillguard_no_such_module:x")
    assert registry.names() == ["gone", "json_dumps"]
    assert "distillguard_no_such_module" not in sys.modules
    assert registry.get("json_dumps")({"a": 1}) == '{"a": 1}'
    with pytest.raises(RegistryError, match=r"needs the package distillguard_no_such_module"
                       r", which is not installed \(pip install 'distillguard\[local\]'\)"):
        registry.get("gone")


def test_a_signal_registered_temporarily_is_gone_afterwards():
    class Probe:
        name = "test_probe"
        group = "automation"

        def __init__(self, settings=None): ...

    with SIGNALS.temporarily("test_probe", Probe):
        assert isinstance(create_signal("test_probe"), Probe)
    assert "test_probe" not in SIGNALS
    with pytest.raises(KeyError, match="unknown signal 'test_probe'"):
        create_signal("test_probe")


def test_an_installed_package_adds_entries_through_entry_points(tmp_path, monkeypatch):
    # A distribution as pip leaves it: a module and a .dist-info with entry_points.txt.
    (tmp_path / "dg_fake_plugin.py").write_text(textwrap.dedent("""
        from distillguard.backends.echo import EchoBackend
        from distillguard.telemetry.store import StoreBundle

        def backend(settings):
            return EchoBackend(model_name="from-plugin")

        BUNDLE = StoreBundle("fakedb", "distillguard.telemetry.sqlite_store:"
                             "SQLiteStore.from_settings",
                             "distillguard.policy.store:SQLiteActionStore.from_settings",
                             "distillguard.signup.store:SQLiteSignupStore.from_settings")
    """))
    info = tmp_path / "dg_fake_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dg-fake-plugin\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [distillguard.backends]
        fake = dg_fake_plugin:backend
        echo = dg_fake_plugin:backend

        [distillguard.stores]
        fakedb = dg_fake_plugin:BUNDLE
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        BACKENDS.reload_entry_points()
        STORES.reload_entry_points()
        assert "fake" in BACKENDS.names() and "fakedb" in STORES.names()
        assert "dg_fake_plugin" not in sys.modules  # listed, not imported
        # The settings check takes its choices from the registries, so plugins count.
        settings = Settings.load(env={}, data_dir=str(tmp_path / "d"), backend="fake",
                                 store="fakedb")
        assert backend_from_settings(settings).models() == ["from-plugin"]
        # A plugin cannot take over a built-in name.
        echo = backend_from_settings(settings.replace(backend="echo", model_name="own"))
        assert echo.models() == ["own"]
        bundle = STORES.get("fakedb")
        assert isinstance(bundle, StoreBundle)
        store = bundle.open_events(settings)
        assert store.count_events() == 0
        store.close()
    finally:
        monkeypatch.undo()
        importlib.invalidate_caches()
        sys.modules.pop("dg_fake_plugin", None)
        BACKENDS.reload_entry_points()
        STORES.reload_entry_points()
    assert "fake" not in BACKENDS.names() and "fakedb" not in STORES.names()
