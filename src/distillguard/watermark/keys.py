"""Watermark keys: master secrets with key ids, rotation, and per-account cohort keys.

Secrets live only on the server: in ``DATA/watermark.key`` (JSON, mode 0600, created on
first start) or in the ``watermark_master_secret`` setting (comma-separated, the first
is active). Every key id stays usable for detection after rotation; only the active one
embeds. Each key derives one partition key per (scheme, cohort) with HMAC-SHA256, and an
account maps to one of the key's ``cohorts`` cohorts by another HMAC, so that detection
can tell which cohort of accounts an output came from.

Nothing here logs, prints or serialises a secret except into the key file itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distillguard.datadir import private_dir

log = logging.getLogger(__name__)

KEY_FILE_NAME = "watermark.key"
_FILE_VERSION = 1
_MIN_SECRET_CHARS = 16


class KeyRingError(RuntimeError):
    """Keys cannot be read, created or rotated; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class WatermarkKey:
    """One master secret with its public id. ``repr`` never shows the secret."""

    key_id: str
    secret: bytes = dataclasses.field(repr=False)
    created: float
    cohorts: int

    def cohort_of(self, account: str | None) -> int:
        """The account's cohort in ``0..cohorts-1`` (stable for this key)."""
        label = b"distillguard/wm/cohort\0" + (account or "").encode()
        digest = hmac.new(self.secret, label, hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "little") % self.cohorts

    def partition_key(self, scheme: str, cohort: int) -> bytes:
        """The 32-byte key of ``keyed.KeyedPartition`` for one scheme and cohort."""
        if not 0 <= cohort < self.cohorts:
            raise ValueError(f"cohort {cohort} out of range 0..{self.cohorts - 1}")
        label = f"distillguard/wm/v1/{scheme}/cohort/{cohort}".encode()
        return hmac.new(self.secret, label, hashlib.sha256).digest()

    def public(self) -> dict[str, Any]:
        """What may be shown: id, creation time, cohort count."""
        return {"key_id": self.key_id, "created": self.created, "cohorts": self.cohorts}


class KeyRing:
    """All key ids the server knows, the active one first in ``active``.

    ``path`` is set when the ring lives in a key file (and can rotate there); a ring
    from the settings cannot rotate by itself.
    """

    def __init__(self, keys: list[WatermarkKey], active: str, *,
                 path: Path | None = None) -> None:
        if not keys:
            raise KeyRingError("a key ring needs at least one key")
        self.keys = {k.key_id: k for k in keys}
        if active not in self.keys:
            raise KeyRingError(f"active key id {active!r} is not in the key ring")
        self.active = self.keys[active]
        self.path = path
        self.mtime_ns = _mtime_ns(path) if path else None

    def __iter__(self) -> Iterator[WatermarkKey]:
        return iter(self.keys.values())

    def get(self, key_id: str) -> WatermarkKey:
        try:
            return self.keys[key_id]
        except KeyError:
            raise KeyRingError(f"unknown watermark key id {key_id!r}") from None

    @classmethod
    def from_setting(cls, value: str, cohorts: int) -> KeyRing:
        """Keys from the ``watermark_master_secret`` setting: comma-separated, first active.

        Key ids derive from the secrets, so the same setting always yields the same ids;
        keeping an old secret after the new one keeps its outputs detectable.
        """
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts:
            raise KeyRingError("watermark_master_secret is empty")
        keys = []
        for part in parts:
            if len(part) < _MIN_SECRET_CHARS:
                raise KeyRingError(
                    f"each secret in watermark_master_secret needs at least "
                    f"{_MIN_SECRET_CHARS} characters")
            secret = part.encode()
            key_id = "cfg-" + hmac.new(secret, b"distillguard/wm/key-id", "sha256").hexdigest()[:10]
            keys.append(WatermarkKey(key_id, secret, 0.0, cohorts))
        return cls(keys, keys[0].key_id)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read a key file; ``KeyRingError`` with a clear message when it cannot."""
        try:
            st = path.stat()
            raw = path.read_text()
        except FileNotFoundError:
            raise KeyRingError(
                f"no watermark key at {path}: start the server once (it creates one) or "
                "set watermark_master_secret") from None
        except OSError as exc:
            raise KeyRingError(f"cannot read the watermark key file {path}: {exc}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            # Someone loosened the permissions; tighten them rather than run with a key
            # that other local users can read.
            log.warning("watermark key file %s was readable by others; setting mode 0600",
                        path)
            os.chmod(path, 0o600)
        try:
            data = json.loads(raw)
            keys = [WatermarkKey(k["key_id"], bytes.fromhex(k["secret"]), float(k["created"]),
                                 int(k["cohorts"])) for k in data["keys"]]
            return cls(keys, data["active"], path=path)
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyRingError(f"watermark key file {path} is damaged ({type(exc).__name__}); "
                            "restore it from a backup") from None

    @classmethod
    def load_or_create(cls, path: Path, cohorts: int) -> KeyRing:
        """Read the key file, creating it with one fresh key when it does not exist."""
        if not path.exists():
            key = _new_key(1, cohorts)
            try:
                _write_new(path, _serialise([key], key.key_id))
                log.info("created watermark key %s in %s", key.key_id, path)
            except FileExistsError:
                pass  # another process created it first; use theirs
        return cls.load(path)

    def rotate(self, cohorts: int | None = None) -> WatermarkKey:
        """Add a new key, make it active, keep the old ones; rewrite the key file."""
        if self.path is None:
            raise KeyRingError(
                "the watermark keys come from the watermark_master_secret setting: rotate "
                "by putting a new secret first in that setting and keeping the old ones "
                "after it")
        current = KeyRing.load(self.path)  # never overwrite keys added by someone else
        number = 1 + max(_key_number(k.key_id) for k in current)
        key = _new_key(number, cohorts or current.active.cohorts)
        _replace(self.path, _serialise([*current, key], key.key_id))
        self.keys = {**current.keys, key.key_id: key}
        self.active = key
        self.mtime_ns = _mtime_ns(self.path)
        return key

    def changed_on_disk(self) -> bool:
        """True when the key file was rewritten since this ring read it."""
        return self.path is not None and _mtime_ns(self.path) != self.mtime_ns


def _new_key(number: int, cohorts: int) -> WatermarkKey:
    if cohorts < 1:
        raise KeyRingError(f"watermark_cohorts must be at least 1, got {cohorts}")
    return WatermarkKey(f"wk{number}", secrets.token_bytes(32), round(time.time(), 3), cohorts)


def _key_number(key_id: str) -> int:
    return int(key_id[2:]) if key_id.startswith("wk") and key_id[2:].isdigit() else 0


def _serialise(keys: list[WatermarkKey], active: str) -> bytes:
    data = {"version": _FILE_VERSION, "active": active,
            "keys": [{**k.public(), "secret": k.secret.hex()} for k in keys]}
    return (json.dumps(data, indent=1) + "\n").encode()


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _write_new(path: Path, content: bytes) -> None:
    """Create ``path`` with mode 0600 from the first byte; FileExistsError if present."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    _write_private(tmp, content)
    try:
        # link() fails if the target exists, so two first starts cannot both win.
        os.link(tmp, path)
    finally:
        tmp.unlink()


def _replace(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    _write_private(tmp, content)
    os.replace(tmp, path)


def _write_private(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
