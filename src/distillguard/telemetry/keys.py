"""API keys and accounts: the records the control plane keeps, and how keys are made.

A key is ``sk-dg-`` followed by 43 URL-safe characters (32 random bytes). The store keeps
only its SHA-256, a public key id (``key_...``) and a short prefix for display; the
plaintext is shown once, when the key is created.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets

KEY_PREFIX = "sk-dg-"
KEY_ID_PREFIX = "key_"
# Characters of the plaintext kept for display ("sk-dg-Ab3x"): 4 of 43 random characters,
# 24 of 256 bits, enough to tell keys apart in a list and far too few to help a guess.
DISPLAY_PREFIX_CHARS = len(KEY_PREFIX) + 4
_KEY_BYTES = 32
MAX_ACCOUNT_CHARS = 200


@dataclasses.dataclass(frozen=True)
class Account:
    """An account: who owns keys. ``created_at`` is Unix time."""

    name: str
    created_at: float


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """What the store knows about one API key (never the key itself).

    ``prefix`` is the start of the key, safe to show. ``revoked_at`` is the Unix time of
    revocation, None while the key is active. ``name`` is an optional human label.
    """

    key_id: str
    account: str
    prefix: str
    created_at: float
    revoked_at: float | None = None
    name: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclasses.dataclass(frozen=True)
class NewKey:
    """A freshly generated key: the plaintext (shown once) and what the store keeps."""

    key_id: str
    plaintext: str
    prefix: str
    key_hash: str


def hash_key(plaintext: str) -> str:
    """The stored form of a key: hex SHA-256.

    A plain fast hash is enough here, unlike for passwords: keys carry 256 random bits,
    so there is no dictionary to try and a brute-force search of the key space is out of
    reach whatever the hash costs. A slow hash (bcrypt, scrypt) would only put tens of
    milliseconds of CPU on every authenticated request.
    """
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def generate_key() -> NewKey:
    """A new random key with its id, display prefix and hash."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)
    return NewKey(
        key_id=KEY_ID_PREFIX + secrets.token_hex(8),
        plaintext=plaintext,
        prefix=plaintext[:DISPLAY_PREFIX_CHARS],
        key_hash=hash_key(plaintext),
    )


def check_account_name(name: str) -> str:
    """The account name, stripped; ValueError when it is empty, too long or not printable."""
    cleaned = name.strip() if isinstance(name, str) else ""
    if not cleaned:
        raise ValueError("account name must not be empty")
    if len(cleaned) > MAX_ACCOUNT_CHARS:
        raise ValueError(f"account name is longer than {MAX_ACCOUNT_CHARS} characters")
    if not cleaned.isprintable():
        raise ValueError("account name must contain only printable characters")
    return cleaned
