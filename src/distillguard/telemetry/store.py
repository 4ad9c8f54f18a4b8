"""The ``Store`` interface and the registry of stores by name.

A store holds two kinds of state: the control plane (accounts and API keys, small, read
on every request through ``KeyCache``) and the data plane (request events, written in
batches by ``EventWriter``, read by detection and export). The interface is synchronous:
the gateway calls cheap reads from the event loop and everything else from threads.

Stores: ``sqlite`` (default; files under ``settings.data_path``) and ``postgres`` (at
``settings.postgres_dsn``). ``open_store(settings)`` picks one by ``settings.store``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from distillguard.config import SettingsError

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.telemetry.events import RequestEvent
    from distillguard.telemetry.keys import Account, KeyRecord

# ``keys_version()`` returns this when the store cannot tell cheaply whether keys changed;
# ``KeyCache`` then keeps entries for ``key_cache_ttl`` seconds.
VERSION_UNKNOWN = -1


@runtime_checkable
class Store(Protocol):
    """Accounts, API keys and request events behind one synchronous interface.

    All methods are safe to call from several threads at once.
    """

    name: str

    # --- control plane -------------------------------------------------------------
    def ensure_account(self, account: str) -> Account:
        """Create the account if it does not exist; return it. ValueError on a bad name."""
        ...

    def get_account(self, account: str) -> Account | None:
        """The account, or None if there is none by that name."""
        ...

    def list_accounts(self) -> list[Account]:
        """All accounts, oldest first."""
        ...

    def create_key(self, account: str, *, name: str | None = None) -> tuple[KeyRecord, str]:
        """Create a key for ``account`` (created if missing); return it and its plaintext.

        The plaintext is returned this once and never stored.
        """
        ...

    def list_keys(self, account: str | None = None) -> list[KeyRecord]:
        """Keys, active and revoked, oldest first; only ``account``'s when given."""
        ...

    def get_key(self, key_id: str) -> KeyRecord | None:
        """The key with this public id, or None."""
        ...

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False when no key has this id. Revoking twice keeps the first time."""
        ...

    def lookup_key(self, plaintext: str) -> KeyRecord | None:
        """The record of a presented key (active or revoked), or None if it is unknown."""
        ...

    def keys_version(self) -> int:
        """A number that changes whenever accounts or keys change, in any process.

        Cheap enough to call on every request. ``VERSION_UNKNOWN`` (-1) means the store
        cannot tell; callers then cache reads for a bounded time only.
        """
        ...

    # --- data plane ----------------------------------------------------------------
    def write_events(self, events: list[RequestEvent]) -> None:
        """Write a batch in one transaction: all of it or, on an exception, none of it.

        Events are keyed by ``request_id``: writing an id that is already stored keeps
        the stored event, so retrying a batch whose outcome was unknown is safe.
        """
        ...

    def iter_events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        account: str | None = None,
    ) -> Iterator[RequestEvent]:
        """Stream events in arrival order (``ts``), ``since <= ts < until``, optionally one
        account's. Rows are fetched in chunks, so memory stays flat on large tables."""
        ...

    def count_events(self) -> int:
        """How many events are stored."""
        ...

    # --- the event log, tailed by id (detection reads it; see ``detection.log``) -------
    def events_after(self, after_id: int, limit: int) -> list[tuple[int, RequestEvent]]:
        """Up to ``limit`` events with id > ``after_id``, as (id, event), in id order.

        Ids grow in commit order: a reader that has seen id N never later finds a
        committed event below N, so ``after_id`` is a complete position in the log.
        """
        ...

    def last_event_id(self) -> int:
        """The highest event id written so far (0 for an empty store)."""
        ...

    def first_event_id_since(self, ts: float) -> int:
        """The lowest id of an event with ``ts`` at or after ``ts`` (last id + 1 if none)."""
        ...

    def close(self) -> None:
        """Release connections. The store is unusable afterwards."""
        ...


# name -> "module:attribute" of a factory ``(settings) -> Store``. Modules load lazily so
# that the postgres driver (an optional dependency) is imported only when it is used.
_REGISTRY: dict[str, str] = {
    "sqlite": "distillguard.telemetry.sqlite_store:SQLiteStore.from_settings",
    "postgres": "distillguard.telemetry.postgres_store:PostgresStore.from_settings",
}


def store_names() -> list[str]:
    """Names of all registered stores."""
    return sorted(_REGISTRY)


def _factory(name: str) -> Callable[[Settings], Store]:
    module_name, _, attr_path = _REGISTRY[name].partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise SettingsError(
            f"store {name!r} needs the package {exc.name!r}, which is not installed "
            f"(pip install 'distillguard[{name}]')"
        ) from None
    for attr in attr_path.split("."):
        target = getattr(target, attr)
    return target  # type: ignore[return-value]


def open_store(settings: Settings) -> Store:
    """Open the store that ``settings.store`` names, creating its tables if needed."""
    name = settings.store
    if name not in _REGISTRY:
        raise SettingsError(
            f"setting 'store': unknown store {name!r}; choose one of {', '.join(store_names())}"
        )
    return _factory(name)(settings)
