"""The ``Store`` interface and the registry of stores by name.

A store holds two kinds of state: the control plane (accounts and API keys, small, read
on every request through ``KeyCache``) and the data plane (request events, written in
batches by ``EventWriter``, read by detection and export). The interface is synchronous:
the gateway calls cheap reads from the event loop and everything else from threads.

Stores: ``sqlite`` (default; files under ``settings.data_path``) and ``postgres`` (at
``settings.postgres_dsn``), each a ``StoreBundle`` in ``STORES`` that also opens the
policy action store. ``open_store(settings)`` picks one by ``settings.store``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from distillguard.config import SettingsError
from distillguard.registry import Registry, RegistryError

if TYPE_CHECKING:
    from distillguard.config import Settings
    from distillguard.policy.store import ActionStore
    from distillguard.signup.store import SignupStore
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

    def recent_events(self, account: str, limit: int) -> list[RequestEvent]:
        """The account's latest ``limit`` events, newest first."""
        ...

    def event_histogram(self, *, since: float, until: float, bucket_s: float,
                        account: str | None = None) -> list[tuple[int, int, int]]:
        """(bucket index, requests, distinct accounts) for each non-empty ``bucket_s``
        bucket of ``since <= ts < until``, optionally one account's."""
        ...

    def close(self) -> None:
        """Release connections. The store is unusable afterwards."""
        ...


@dataclasses.dataclass(frozen=True)
class StoreBundle:
    """What one ``store`` name provides: the event store (accounts, keys and request
    events, one ``Store``), the policy action store and the sign-up store.

    Each is a ``"module:attribute"`` path of a factory ``(settings) -> store``, imported
    when it is opened, so that a database driver (an optional dependency) is imported
    only when it is used. ``extra`` is the pip extra that installs that driver. Rate-limit
    counters have their own registry (``policy.ratelimit.RATE_STORES``) because the
    ``rate_store`` setting picks them apart from this one: SQLite events with Redis
    counters is a normal deployment.
    """

    name: str
    events: str
    actions: str
    signup: str
    extra: str | None = None

    def open_events(self, settings: Settings) -> Store:
        """The accounts, keys and events store, its tables created if needed."""
        return cast("Callable[[Settings], Store]", self._factory(self.events))(settings)

    def open_actions(self, settings: Settings) -> ActionStore:
        """The policy action store, its tables created if needed."""
        factory = cast("Callable[[Settings], ActionStore]", self._factory(self.actions))
        return factory(settings)

    def open_signup(self, settings: Settings) -> SignupStore:
        """The sign-up store (addresses, requests, tokens), its tables created if needed."""
        factory = cast("Callable[[Settings], SignupStore]", self._factory(self.signup))
        return factory(settings)

    def _factory(self, path: str) -> object:
        module_name, _, attr_path = path.partition(":")
        try:
            target: object = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f" (pip install 'distillguard[{self.extra}]')" if self.extra else ""
            raise SettingsError(f"store {self.name!r} needs the package {exc.name!r}, which "
                                f"is not installed{hint}") from None
        for attr in attr_path.split("."):
            target = getattr(target, attr)
        return target


# Other packages add bundles through the ``distillguard.stores`` entry-point group (the
# entry point names a ``StoreBundle`` object).
STORES: Registry[StoreBundle] = Registry("store", "distillguard.stores")
for _bundle in (
    StoreBundle("sqlite", "distillguard.telemetry.sqlite_store:SQLiteStore.from_settings",
                "distillguard.policy.store:SQLiteActionStore.from_settings",
                "distillguard.signup.store:SQLiteSignupStore.from_settings"),
    StoreBundle("postgres", "distillguard.telemetry.postgres_store:PostgresStore.from_settings",
                "distillguard.policy.store:PostgresActionStore.from_settings",
                "distillguard.signup.store:PostgresSignupStore.from_settings",
                extra="postgres"),
):
    STORES.register(_bundle.name, _bundle)


def store_names() -> list[str]:
    """Names of all registered stores."""
    return STORES.names()


def store_bundle(settings: Settings) -> StoreBundle:
    """The bundle that ``settings.store`` names; SettingsError names the choices."""
    try:
        return STORES.get(settings.store)
    except RegistryError:
        raise SettingsError(f"setting 'store': unknown store {settings.store!r}; choose one "
                            f"of {', '.join(store_names())}") from None


def open_store(settings: Settings) -> Store:
    """Open the store that ``settings.store`` names, creating its tables if needed."""
    return store_bundle(settings).open_events(settings)
