"""Screening a sign-up before any account exists: disposable domains, an allow/deny file,
and velocity per address prefix, per email domain and per client fingerprint.

Each check answers a ``Verdict`` with the reason in words; the service records every
verdict with its attempt (``signup_requests``) and in the audit log.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

from distillguard.config import SettingsError
from distillguard.signup.store import SignupStore

HOUR = 3600.0
# The sign-up funnel counts refusals by kind: each kind with a LIKE pattern of the
# reasons below that it covers (a test checks that every refusal matches one).
REFUSAL_KINDS = (
    ("disposable domain", "domain % is a disposable-mail domain (%"),
    ("denied domain", "domain % is denied by the local domain file (%"),
    ("velocity: address prefix", "velocity: address prefix %"),
    ("velocity: client fingerprint", "velocity: client fingerprint %"),
    ("velocity: email domain", "velocity: email domain %"),
)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """``ok`` or not, a code for the client and a reason for the record."""

    ok: bool
    code: str = "accepted"
    reason: str = "passed screening"
    retry_after: float | None = None


def _read_list(text: str) -> list[str]:
    return [line.split("#", 1)[0].strip().lower() for line in text.splitlines()
            if line.split("#", 1)[0].strip()]


def load_domain_file(path: str) -> tuple[set[str], set[str]]:
    """``(allowed, denied)`` domains of a file of ``allow DOMAIN`` / ``deny DOMAIN`` lines."""
    allowed: set[str] = set()
    denied: set[str] = set()
    if not path:
        return allowed, denied
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"setting 'signup_domains_file': cannot read {path}: {exc}") from None
    for number, line in enumerate(_read_list(text), 1):
        verb, _, domain = line.partition(" ")
        domain = domain.strip().rstrip(".")
        if verb not in ("allow", "deny") or not domain or " " in domain:
            raise SettingsError(f"setting 'signup_domains_file': {path} entry {number} "
                                f"must be 'allow DOMAIN' or 'deny DOMAIN', got {line!r}")
        (allowed if verb == "allow" else denied).add(domain)
    return allowed, denied


class Screening:
    """The checks, in the order they run (cheapest and most certain first)."""

    def __init__(self, store: SignupStore, *, per_prefix: int, per_domain: int,
                 per_fingerprint: int, allowed: set[str] | None = None,
                 denied: set[str] | None = None) -> None:
        from disposable_email_domains import blocklist

        self.store = store
        self.per_prefix = per_prefix
        self.per_domain = per_domain
        self.per_fingerprint = per_fingerprint
        self.allowed = allowed or set()
        self.denied = denied or set()
        self.disposable = blocklist
        self.freemail = set(_read_list(
            resources.files("distillguard.signup").joinpath("data/freemail.txt").read_text()))

    def domain(self, domain: str) -> Verdict:
        """Whether mail at ``domain`` (or a parent domain) may sign up."""
        parts = domain.split(".")
        candidates = [".".join(parts[i:]) for i in range(len(parts) - 1)]
        if any(c in self.allowed for c in candidates):
            return Verdict(True)
        for c in candidates:
            if c in self.denied:
                return Verdict(False, "email_domain_not_allowed",
                               f"domain {domain} is denied by the local domain file ({c})")
            if c in self.disposable:
                return Verdict(False, "email_domain_not_allowed",
                               f"domain {domain} is a disposable-mail domain ({c})")
        return Verdict(True)

    def velocity(self, now: float, *, prefix: str, domain: str, fingerprint: str) -> Verdict:
        """Whether this source has made too many attempts in the last hour."""
        since = now - HOUR
        checks = [("prefix", prefix, self.per_prefix, "address prefix"),
                  ("fingerprint", fingerprint, self.per_fingerprint, "client fingerprint")]
        if domain not in self.freemail:
            checks.append(("domain", domain, self.per_domain, "email domain"))
        for column, value, limit, what in checks:
            if limit <= 0:
                continue
            seen = self.store.count(since, column=column, value=value)
            if seen >= limit:
                return Verdict(False, "signup_rate_limited",
                               f"velocity: {what} {value} made {seen} sign-up attempts in "
                               f"the last hour (limit {limit})", retry_after=HOUR / limit)
        return Verdict(True)

    def source_attempts(self, now: float, prefix: str) -> int:
        """Attempts from this prefix in the last hour (raises its puzzle level)."""
        return self.store.count(now - HOUR, column="prefix", value=prefix)
