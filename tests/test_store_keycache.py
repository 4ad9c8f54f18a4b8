"""KeyCache against a scripted store: versions, TTL, races and the size bound."""

from __future__ import annotations

import time

from distillguard.telemetry.keycache import KeyCache
from distillguard.telemetry.keys import KeyRecord
from distillguard.telemetry.store import VERSION_UNKNOWN

ACTIVE = KeyRecord("key_1", "acme", "sk-dg-abcd", 1.0)
REVOKED = KeyRecord("key_1", "acme", "sk-dg-abcd", 1.0, revoked_at=2.0)


class ScriptedStore:
    """lookup_key answers ``current``; keys_version answers ``version``."""

    def __init__(self, version: int = 0) -> None:
        self.version = version
        self.current: KeyRecord | None = ACTIVE
        self.lookups = 0
        self.during_lookup = None

    def keys_version(self) -> int:
        return self.version

    def lookup_key(self, plaintext: str) -> KeyRecord | None:
        self.lookups += 1
        answer = self.current
        if self.during_lookup:
            self.during_lookup()
        return answer


def test_a_version_change_drops_cached_keys() -> None:
    store = ScriptedStore()
    cache = KeyCache(store, ttl=3600)  # type: ignore[arg-type]
    assert cache.get("sk-dg-k") == ACTIVE
    store.current = REVOKED
    assert cache.get("sk-dg-k") == ACTIVE  # nothing changed as far as the store says
    store.version += 1
    assert cache.get("sk-dg-k") == REVOKED


def test_unknown_version_entries_expire_after_the_ttl() -> None:
    store = ScriptedStore(VERSION_UNKNOWN)
    cache = KeyCache(store, ttl=0.05)  # type: ignore[arg-type]
    assert cache.get("sk-dg-k") == ACTIVE
    store.current = REVOKED
    assert cache.get("sk-dg-k") == ACTIVE
    time.sleep(0.06)
    assert cache.get("sk-dg-k") == REVOKED
    assert store.lookups == 2


def test_a_change_during_the_lookup_is_not_cached_as_current() -> None:
    store = ScriptedStore()
    cache = KeyCache(store, ttl=3600)  # type: ignore[arg-type]

    def revoke_meanwhile() -> None:
        # Another request sees the new version (and clears) while we hold a stale answer.
        store.during_lookup = None
        store.current = REVOKED
        store.version += 1
        assert cache.get("sk-dg-k") == REVOKED

    store.during_lookup = revoke_meanwhile
    assert cache.get("sk-dg-k") == ACTIVE  # answered from before the revocation
    assert cache.get("sk-dg-k") == REVOKED  # ...but not remembered as current


def test_unknown_keys_are_cached_and_the_cache_is_bounded() -> None:
    store = ScriptedStore()
    store.current = None
    cache = KeyCache(store, ttl=3600, max_entries=10)  # type: ignore[arg-type]
    for i in range(100):
        assert cache.get(f"sk-dg-guess-{i}") is None
    assert store.lookups == 100
    assert cache.get("sk-dg-guess-99") is None  # recent: still cached
    assert store.lookups == 100
    assert cache.get("sk-dg-guess-0") is None  # evicted: read again
    assert store.lookups == 101
