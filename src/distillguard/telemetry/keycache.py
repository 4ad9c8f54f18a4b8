"""``KeyCache``: the gateway's view of API keys, exact without a query per request.

Each ``get`` first asks the store for ``keys_version()``. When the number changed since
the last call (a key was created or revoked, in this process or another), the whole cache
is dropped, so a revocation applies to the very next request. Stores that cannot tell
(``VERSION_UNKNOWN``) get a time bound instead: an entry is re-read after ``ttl`` seconds.

Unknown keys are cached too (as None), so a flood of made-up keys costs one store read
per distinct key per version or TTL, not one per request; the cache holds at most
``max_entries`` keys, evicting the least recently used, so that flood cannot grow memory
without bound.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from distillguard.telemetry.keys import hash_key
from distillguard.telemetry.store import VERSION_UNKNOWN

if TYPE_CHECKING:
    from distillguard.telemetry.keys import KeyRecord
    from distillguard.telemetry.store import Store

_MISSING = object()


class KeyCache:
    """Cached ``store.lookup_key`` that never serves a key revoked before the call.

    For stores that report ``VERSION_UNKNOWN`` the guarantee weakens to "revoked at most
    ``ttl`` seconds before". Safe to use from several threads.
    """

    def __init__(self, store: Store, ttl: float, *, max_entries: int = 100_000) -> None:
        self.store = store
        self.ttl = ttl
        self.max_entries = max_entries
        self._lock = threading.Lock()
        # key hash -> (record or None, monotonic time it was read). Keyed by hash so the
        # cache holds no plaintext keys.
        self._entries: OrderedDict[str, tuple[KeyRecord | None, float]] = OrderedDict()
        self._version: int | None = None

    def _cached(self, digest: str) -> tuple[object, int]:
        """(the cached record, None for a known-unknown key, or ``_MISSING``; the version)."""
        version = self.store.keys_version()
        now = time.monotonic()
        with self._lock:
            if version != self._version:
                self._entries.clear()
                self._version = version
                return _MISSING, version
            entry = self._entries.get(digest)
            if entry is None:
                return _MISSING, version
            record, read_at = entry
            if version == VERSION_UNKNOWN and now - read_at >= self.ttl:
                del self._entries[digest]
                return _MISSING, version
            self._entries.move_to_end(digest)
            return record, version

    def _remember(
        self, digest: str, record: KeyRecord | None, version: int, read_at: float
    ) -> None:
        with self._lock:
            # The version moved while we read the store (another caller saw a change and
            # cleared the cache): what we read may predate that change, so keep nothing.
            if version != self._version:
                return
            self._entries[digest] = (record, read_at)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, plaintext: str) -> KeyRecord | None:
        """The key's record (check ``revoked_at``), or None if the store does not know it.

        Reads the store only on a miss; a hit costs one ``keys_version()`` call.
        """
        digest = hash_key(plaintext)
        cached, version = self._cached(digest)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        # The entry belongs to the version read *before* this lookup: a change that
        # commits while we read bumps the version, so the next get drops the entry.
        read_at = time.monotonic()
        record = self.store.lookup_key(plaintext)
        self._remember(digest, record, version, read_at)
        return record

    async def aget(self, plaintext: str) -> KeyRecord | None:
        """``get`` for the event loop: hits answer inline, misses read in a worker thread."""
        digest = hash_key(plaintext)
        cached, version = self._cached(digest)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        read_at = time.monotonic()
        record = await asyncio.to_thread(self.store.lookup_key, plaintext)
        self._remember(digest, record, version, read_at)
        return record

    def clear(self) -> None:
        """Forget every entry (the next ``get`` of each key reads the store)."""
        with self._lock:
            self._entries.clear()
            self._version = None
