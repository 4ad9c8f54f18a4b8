"""Analyst accounts and console sessions, in ``console.db`` under the data folder.

Passwords are argon2id hashes (``argon2-cffi``). A session is a random token in an
HttpOnly, SameSite=Strict cookie; the database keeps only its SHA-256, with the analyst,
the session's CSRF token and its expiry, so sessions survive a restart, work across
replicas sharing the folder, and a stolen database opens none of them. Only a successful
log-in writes a row, and each log-in deletes expired sessions: unauthenticated requests
cannot grow the file. ``LoginThrottle`` slows password and token guessing, in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

CONSOLE_DB = "console.db"
NAME = re.compile(r"^[\w.@-]{1,100}$")
# The analyst name admin-token sessions are audited under.
ADMIN_ANALYST = "admin"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS analysts (
    name        TEXT PRIMARY KEY,
    hash        TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash  TEXT PRIMARY KEY,
    analyst     TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class Session:
    """A logged-in analyst: who, the CSRF token their forms carry, and when it ends."""

    analyst: str
    csrf: str
    expires_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AnalystStore:
    """Analysts and sessions in one SQLite file; a connection per call, so nothing to
    close and safe from any thread."""

    def __init__(self, directory: str | Path, *, clock: Callable[[], float] = time.time
                 ) -> None:
        from argon2 import PasswordHasher

        self.path = Path(directory) / CONSOLE_DB
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._hasher = PasswordHasher()
        # A hash to verify against for unknown names, so timing does not tell them apart.
        self._dummy = self._hasher.hash(secrets.token_hex(16))
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
        self.path.chmod(0o600)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    # --- analysts ----------------------------------------------------------------------
    def create(self, name: str, password: str) -> None:
        """Add an analyst (ValueError for a bad name, a short password or a taken name)."""
        if not NAME.match(name) or name == ADMIN_ANALYST:
            raise ValueError("an analyst name is 1-100 letters, digits, '.', '@', '_' or "
                             f"'-', and not {ADMIN_ANALYST!r}")
        if len(password) < 12:
            raise ValueError("the password must have at least 12 characters")
        try:
            with self._connect() as conn:
                conn.execute("INSERT INTO analysts VALUES (?, ?, ?)",
                             (name, self._hasher.hash(password), self.clock()))
        except sqlite3.IntegrityError:
            raise ValueError(f"analyst {name!r} exists already") from None

    def delete(self, name: str) -> bool:
        """Remove an analyst and end their sessions; False when there was none."""
        with self._connect() as conn:
            gone = conn.execute("DELETE FROM analysts WHERE name = ?", (name,)).rowcount
            conn.execute("DELETE FROM sessions WHERE analyst = ?", (name,))
        return bool(gone)

    def names(self) -> list[tuple[str, float]]:
        """(name, created_at) of every analyst."""
        with self._connect() as conn:
            return conn.execute("SELECT name, created_at FROM analysts ORDER BY name").fetchall()

    def check_password(self, name: str, password: str) -> bool:
        """True when ``password`` is the analyst's (constant work for unknown names)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        with self._connect() as conn:
            row = conn.execute("SELECT hash FROM analysts WHERE name = ?", (name,)).fetchone()
        try:
            return bool(self._hasher.verify(row[0] if row else self._dummy, password)) and \
                row is not None
        except (VerificationError, InvalidHashError):
            return False

    # --- sessions ----------------------------------------------------------------------
    def open_session(self, analyst: str, ttl: float) -> tuple[str, Session]:
        """A new session for ``analyst``: (cookie token, session)."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(analyst, secrets.token_urlsafe(32), now + ttl)
        with self._connect() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                         (_digest(token), analyst, session.csrf, now, session.expires_at))
        return token, session

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie token, or None (unknown or expired)."""
        if not token or len(token) > 100:
            return None
        with self._connect() as conn:
            row = conn.execute("SELECT analyst, csrf, expires_at FROM sessions WHERE "
                               "token_hash = ?", (_digest(token),)).fetchone()
        if row is None or row[2] <= self.clock():
            return None
        return Session(*row)

    def close_session(self, token: str | None) -> None:
        """Log out: forget the session."""
        if token:
            with self._connect() as conn:
                conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_digest(token),))


def client_key(addr: str | None) -> str:
    """What log-in failures are counted by for a client address: the address, or an IPv6
    address's /64 (one host's allocation: rotating within it buys nothing)."""
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginThrottle:
    """Failed log-ins counted per client address and per analyst name over a sliding
    ``window``; a key with ``limit`` failures in it is refused until the oldest leaves.

    ``begin`` counts an attempt as failed before its password is checked and ``succeeded``
    takes it back, so that parallel guesses cannot all pass the check at once. Memory is
    bounded whatever attackers send: addresses and names are two LRUs of at most
    ``max_keys`` keys each (rotating addresses cannot evict a name's count, and a name
    under attack stays recent), each key holding at most ``limit`` times. Audit entries
    for failures are capped at ``max_audits`` per window in all, so that failed log-ins
    cannot grow the audit log without bound either.
    """

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.time,
                 max_keys: int = 10_000, max_audits: int = 100) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._failures: tuple[OrderedDict[str, deque[float]], ...] = (OrderedDict(),
                                                                        OrderedDict())
        self._audits: deque[float] = deque(maxlen=max_audits)

    def _live(self, table: OrderedDict[str, deque[float]], key: str, now: float
              ) -> deque[float]:
        times = table.get(key)
        if times is None:
            return deque(maxlen=self.limit)
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def begin(self, addr: str, name: str, *, known_device: bool = False) -> float | None:
        """Seconds to wait when the address or the name is over its limit (nothing is
        counted then); else None, and the attempt is counted as a failure.

        ``known_device``: the browser carries a device cookie from an earlier successful
        log-in under this name, so the name's lock does not apply to it (its address's
        still does). Otherwise anyone could lock an analyst, or every holder of the admin
        token, out of the console with a few wrong guesses from a few addresses."""
        now = self.clock()
        keys = (addr, name)
        with self._lock:
            waits = []
            for i, (table, key) in enumerate(zip(self._failures, keys)):
                times = self._live(table, key, now)
                if len(times) >= self.limit and not (i == 1 and known_device):
                    waits.append(times[0] + self.window - now)
                    table.move_to_end(key)  # a name under attack stays in the table
            if waits:
                return max(max(waits), 1.0)
            for table, key in zip(self._failures, keys):
                times = self._live(table, key, now)
                times.append(now)
                table[key] = times
                table.move_to_end(key)
                while len(table) > self.max_keys:
                    table.popitem(last=False)
        return None

    def succeeded(self, addr: str, name: str) -> None:
        """The attempt ``begin`` counted was right: forget both keys' failures."""
        with self._lock:
            for table, key in zip(self._failures, (addr, name)):
                table.pop(key, None)

    def failures(self, addr: str, name: str) -> int:
        """The larger of the two keys' failures in the window now."""
        now = self.clock()
        with self._lock:
            return max(len(self._live(t, k, now)) for t, k in zip(self._failures,
                                                                  (addr, name)))

    def may_audit(self) -> bool:
        """Whether one more failure may go into the audit log in this window."""
        now = self.clock()
        with self._lock:
            while self._audits and self._audits[0] <= now - self.window:
                self._audits.popleft()
            if len(self._audits) == self._audits.maxlen:
                return False
            self._audits.append(now)
            return True


class DeviceCookies:
    """Cookies that mark a browser which has logged in under a name before (OWASP's
    "device cookie" defence against lock-out): ``name:expiry:mac``, the MAC keyed by a
    secret of this process, so a restart forgets every device (it then logs in as any
    other until its next success). They carry no session and grant nothing but an
    exemption from the name's log-in lock."""

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.time) -> None:
        self.ttl, self.clock = ttl, clock
        self._key = secrets.token_bytes(32)

    def _mac(self, name: str, expiry: int) -> str:
        msg = f"{name}\0{expiry}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]

    def issue(self, name: str) -> str:
        expiry = int(self.clock() + self.ttl)
        return f"{name}:{expiry}:{self._mac(name, expiry)}"

    def known(self, cookie: str | None, name: str) -> bool:
        """Whether ``cookie`` is a live device cookie this process issued for ``name``."""
        if not cookie or cookie.count(":") < 2:
            return False
        rest, expiry_text, mac = cookie.rsplit(":", 2)
        if rest != name or not expiry_text.isdigit() or int(expiry_text) < self.clock():
            return False
        return hmac.compare_digest(mac, self._mac(name, int(expiry_text)))


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two optional strings (False when either is missing)."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())
