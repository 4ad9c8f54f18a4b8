"""What a sign-up is screened on: the normalised address, the client's address prefix and
its fingerprint.

Normalising folds the variants one mailbox answers to into one address, so that
``j.o.h.n+x1@gmail.com`` and ``john+x2@googlemail.com`` count as one person: plus-tags go
for every domain (no provider delivers differently by tag), dots go only for providers
that ignore them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re

MAX_EMAIL_CHARS = 200  # the normalised address is the account name (at most 200 chars)
# Providers that deliver "j.ohn" and "john" to one mailbox, and their aliases.
_DOTLESS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}
# A pragmatic address check: one "@", a dotted domain, no spaces or angle brackets.
# Deliverability is proven by the emailed link, not by a grammar.
_EMAIL = re.compile(r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")
# Headers whose presence or order says nothing about the client software.
_VOLATILE = {b"cookie", b"content-length", b"x-forwarded-for", b"x-real-ip",
             b"x-distillguard-sim-time"}


@dataclasses.dataclass(frozen=True)
class Address:
    """An email address as given (where mail goes) and its normalised form."""

    given: str
    normalised: str
    domain: str


def parse_email(raw: object) -> Address:
    """The address, normalised; ValueError with a reason a user can act on."""
    if not isinstance(raw, str):
        raise ValueError("'email' must be a string")
    given = raw.strip()
    if len(given) > MAX_EMAIL_CHARS:
        raise ValueError(f"'email' is longer than {MAX_EMAIL_CHARS} characters")
    if not given.isascii() or not _EMAIL.match(given):
        raise ValueError("'email' is not an email address (expected name@example.com)")
    local, _, domain = given.rpartition("@")
    domain = domain.lower().rstrip(".")
    local = local.lower().split("+", 1)[0]
    if domain in _DOTLESS:
        domain = _DOTLESS[domain]
        local = local.replace(".", "")
    if not local:
        raise ValueError("'email' has nothing before its '+' tag")
    return Address(given, f"{local}@{domain}", domain)


def address_prefix(addr: str | None) -> str:
    """The network a client address belongs to: IPv4 /24, IPv6 /48 (one subscriber's
    allocation); ``unknown`` when there is no address."""
    if not addr:
        return "unknown"
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def client_fingerprint(headers: list[tuple[bytes, bytes]]) -> str:
    """16 hex characters from the user agent and the order of the header names.

    The order in which a client sends its headers is set by its HTTP library, not by a
    script that varies the user agent, and it survives TLS termination at a proxy.
    """
    user_agent = b""
    names = []
    for name, value in headers:
        if name == b"user-agent":
            user_agent = value[:512]
        if name not in _VOLATILE:
            names.append(name)
    digest = hashlib.sha256(user_agent + b"\n" + b",".join(names[:64]))
    return digest.hexdigest()[:16]
