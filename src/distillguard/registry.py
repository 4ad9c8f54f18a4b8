"""One registry shape for every plug point: backends, stores, signals, schemes, strategies.

A ``Registry[T]`` maps names to entries of one kind. An entry is registered either as the
object itself (``register``) or as a ``"module:attribute"`` path (``register_lazy``) that
is imported on first ``get``, so that listing names never imports torch or a database
driver. Installed packages add entries through an entry-point group, e.g. in their
``pyproject.toml``::

    [project.entry-points."distillguard.backends"]
    mybackend = "mypkg.backend:factory"

Entry points are read once, on the first ``names`` or ``get``, and loaded lazily like
``register_lazy`` entries. Registering a taken name is an error, so two plugins never
silently replace each other; ``temporarily`` registers for the length of a ``with`` block
and leaves the registry exactly as it was, which is what tests use.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class RegistryError(KeyError, ValueError):
    """An unknown name, a taken name, or an entry that cannot be imported.

    Both a KeyError (a lookup failed) and a ValueError (a bad name was given), so callers
    of the registries this replaced keep catching what they caught."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; these messages are for people.
        return str(self.args[0]) if self.args else ""


class _Lazy:
    """A ``module:attribute`` path not imported yet, and what it was declared by."""

    __slots__ = ("path", "origin")

    def __init__(self, path: str, origin: str) -> None:
        module, sep, attr = path.partition(":")
        if not module or not sep or not attr:
            raise ValueError(f"a lazy entry is 'module:attribute', got {path!r}")
        self.path = path
        self.origin = origin


def _import_path(path: str) -> object:
    module_name, _, attr_path = path.partition(":")
    target: object = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        target = getattr(target, attr)
    return target


class Registry(Generic[T]):
    """Entries of one kind by name, with third-party entries from ``group``.

    ``kind`` names the entries in messages ("backend", "store"). ``builtins`` is a module
    whose import registers the built-in entries (decorators at class definitions); it is
    imported on the first lookup. ``missing_extra`` maps an entry name to the pip extra
    that provides its dependencies, so that an import error says what to install.
    """

    def __init__(self, kind: str, group: str | None = None, *, builtins: str | None = None,
                 missing_extra: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, T | _Lazy] = {}
        self._builtins = builtins
        self._entry_points_read = False
        self._plugin_names: set[str] = set()
        self._missing_extra = dict(missing_extra or {})

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; returns it. A taken name is a RegistryError."""
        current = self._entries.get(name)
        # A built-in lazy entry is a promise that its module keeps by registering the
        # object when it is imported.
        fulfils = isinstance(current, _Lazy) and current.origin == "distillguard"
        if current is not None and current is not entry and not fulfils:
            raise RegistryError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register_lazy(self, name: str, path: str) -> None:
        """Add the object at ``"module:attribute"`` under ``name``, imported on first use."""
        if name in self._entries:
            raise RegistryError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = _Lazy(path, "distillguard")

    def decorator(self, key: Callable[[T], str]) -> Callable[[T], T]:
        """A class decorator that registers its class under ``key(cls)``."""
        def add(entry: T) -> T:
            return self.register(key(entry), entry)
        return add

    def names(self) -> list[str]:
        """Every registered name, built-in and from installed packages, sorted."""
        self._read_entry_points()
        return sorted(self._entries)

    def registered_so_far(self) -> frozenset[str]:
        """The names registered until now, importing and reading nothing (for checks that
        a test left the registry as it found it)."""
        return frozenset(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        self._read_entry_points()
        return name in self._entries

    def get(self, name: str) -> T:
        """The entry registered as ``name``, importing it if it is lazy.

        An unknown name is a RegistryError that lists the known ones; an entry whose
        module cannot be imported is a RegistryError that names the missing package.
        """
        self._read_entry_points()
        try:
            entry = self._entries[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r}; known: "
                                f"{', '.join(self.names()) or '(none)'}") from None
        if isinstance(entry, _Lazy):
            try:
                loaded = cast(T, _import_path(entry.path))
            except ImportError as exc:
                extra = self._missing_extra.get(name)
                hint = f" (pip install 'distillguard[{extra}]')" if extra else ""
                raise RegistryError(
                    f"{self.kind} {name!r} needs the package {exc.name or exc!s}, which is "
                    f"not installed{hint}") from None
            except AttributeError as exc:
                raise RegistryError(f"{self.kind} {name!r} from {entry.origin}: "
                                    f"{entry.path} does not resolve ({exc})") from None
            # Only replace the placeholder we read: a test may have swapped the entry.
            if self._entries.get(name) is entry:
                self._entries[name] = loaded
            return loaded
        return entry

    @contextlib.contextmanager
    def temporarily(self, name: str, entry: T) -> Iterator[T]:
        """Register ``entry`` as ``name`` inside a ``with`` block, then remove it."""
        self.register(name, entry)
        try:
            yield entry
        finally:
            if self._entries.get(name) is entry:
                del self._entries[name]

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        if self._builtins is not None:
            importlib.import_module(self._builtins)
        self._entry_points_read = True
        if self.group is None:
            return
        for point in importlib.metadata.entry_points(group=self.group):
            if point.name in self._entries:
                # A built-in name wins; a plugin cannot take it over by installing.
                continue
            dist = getattr(point, "dist", None)
            origin = f"entry point {self.group}:{point.name}"
            if dist is not None:
                origin += f" of {dist.name}"
            self._entries[point.name] = _Lazy(point.value, origin)
            self._plugin_names.add(point.name)

    def reload_entry_points(self) -> None:
        """Read the entry-point group again (after installing a package at run time)."""
        for name in self._plugin_names:
            self._entries.pop(name, None)
        self._plugin_names.clear()
        self._entry_points_read = False
        self._read_entry_points()
