"""The client's address, as far as it can be trusted.

Without ``trust_forwarded_for`` the address is the TCP peer's and ``X-Forwarded-For`` is
ignored. uvicorn's own ``proxy_headers`` is always off (``distillguard serve`` turns it
off): uvicorn trusts 127.0.0.1 by default and would otherwise rewrite the peer from a
header the client wrote.

With ``trust_forwarded_for``, the header is read only when the peer is a trusted proxy
(``trusted_proxies``, addresses or CIDRs; empty: the peer is taken to be the one proxy).
Proxies append the address they saw, so the entries on the right were written by proxies
we run and the ones on the left by whoever sent the request: the client's address is the
right-most entry that is not itself a trusted proxy. An entry that is not an address
(``not-an-ip``, an empty field) where the client's address should be is recorded as
``INVALID`` rather than stored as if it were one.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import Scope

INVALID = "invalid"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> str | None:
    """The canonical form of one address (ports and brackets dropped, IPv4-mapped IPv6
    as IPv4), or None if ``text`` is not an address."""
    text = text.strip().strip('"')
    if text.startswith("["):  # "[2001:db8::1]:443"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # "203.0.113.9:5555"
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def parse_networks(spec: str) -> list[Network]:
    """Networks from a comma-separated list of addresses and CIDRs; ValueError names a
    bad entry."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"setting 'trusted_proxies': {part!r} is not an address or "
                             "CIDR") from None
    return out


class ClientAddress:
    """Decides a request's client address from its peer and X-Forwarded-For."""

    def __init__(self, trust_forwarded_for: bool = False, trusted_proxies: str = "") -> None:
        self.trust = trust_forwarded_for
        self.proxies = parse_networks(trusted_proxies)

    def _trusted(self, addr: str) -> bool:
        ip = ipaddress.ip_address(addr)
        return any(ip in net for net in self.proxies)

    def resolve(self, peer: str | None, forwarded: str | None) -> str | None:
        """The client address for a request from ``peer`` with this X-Forwarded-For."""
        peer_addr = parse_address(peer) if peer else None
        if not self.trust or not forwarded:
            return peer_addr or peer
        if self.proxies and (peer_addr is None or not self._trusted(peer_addr)):
            return peer_addr  # not from our proxy: its header is the client's own words
        for entry in reversed(forwarded.split(",")):
            addr = parse_address(entry)
            if addr is None:
                return INVALID
            if not (self.proxies and self._trusted(addr)):
                return addr
        return peer_addr  # every hop was one of our proxies

    def of_scope(self, scope: Scope) -> str | None:
        """The client address of an ASGI request."""
        client = scope.get("client")
        forwarded = None
        if self.trust:
            values = [v.decode("latin-1") for k, v in scope["headers"]
                      if k == b"x-forwarded-for"]
            # Several headers are one list, in order (RFC 9110 field combination).
            forwarded = ",".join(values) if values else None
        return self.resolve(client[0] if client else None, forwarded)
