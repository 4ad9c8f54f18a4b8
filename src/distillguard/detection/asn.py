"""An offline address -> autonomous system table, for campaign evidence (``asn_table``).

The table is the free iptoasn.com / "ip2asn" TSV: one range a line,
``range_start<TAB>range_end<TAB>AS_number<TAB>country<TAB>AS_description``, addresses in
IPv4 or IPv6 text (``ip2asn-v4.tsv``, ``ip2asn-v6.tsv``, ``ip2asn-combined.tsv``) or
IPv4 as integers (``ip2asn-v4-u32.tsv``). AS number 0 marks unrouted space and is
skipped; blank lines and ``#`` comments are ignored. Ranges must not overlap.

The file is read once per process (every pipeline of a worker shares it) into sorted
range starts per address family, so a lookup is one bisect. A malformed line stops the
start with the file and line named.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import ipaddress
import os

from distillguard.config import SettingsError


class AsnTableError(SettingsError):
    """The ``asn_table`` file cannot be used; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class AS:
    """One autonomous system: its number and the name the table gives it."""

    number: int
    name: str

    def __str__(self) -> str:
        return f"AS{self.number} ({self.name})" if self.name else f"AS{self.number}"


class _Family:
    __slots__ = ("starts", "ends", "systems")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.systems: list[AS] = []


class AsnTable:
    """Address ranges -> AS, one bisect per lookup."""

    def __init__(self, path: str, ranges: list[tuple[int, int, int, AS, int]]) -> None:
        """``ranges``: (family, start, end, AS, line) rows, in any order."""
        self.path = path
        self._families = {4: _Family(), 6: _Family()}
        previous: dict[int, tuple[int, int]] = {}
        for version, start, end, system, line in sorted(ranges, key=lambda r: (r[0], r[1])):
            fam = self._families[version]
            before = previous.get(version)
            if before is not None and start <= before[0]:
                raise AsnTableError(f"asn_table {path}, line {line}: range overlaps the one "
                                    f"on line {before[1]}")
            fam.starts.append(start)
            fam.ends.append(end)
            fam.systems.append(system)
            previous[version] = (end, line)

    def __len__(self) -> int:
        return sum(len(f.starts) for f in self._families.values())

    def lookup(self, addr: str) -> AS | None:
        """The AS announcing ``addr`` (an address, or a network such as
        ``198.51.100.0/24``, looked up by its first address), or None."""
        try:
            ip = ipaddress.ip_network(addr, strict=False).network_address
        except ValueError:
            return None
        fam = self._families[ip.version]
        value = int(ip)
        i = bisect.bisect_right(fam.starts, value) - 1
        if i >= 0 and value <= fam.ends[i]:
            return fam.systems[i]
        return None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if text.isdigit():  # ip2asn-v4-u32.tsv
        return ipaddress.IPv4Address(int(text))
    return ipaddress.ip_address(text)


def parse(path: str, text: str) -> AsnTable:
    """The table in ``text`` (read from ``path``, which errors name)."""
    ranges: list[tuple[int, int, int, AS, int]] = []
    names: dict[tuple[int, str], AS] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = raw.rstrip("\r\n").split("\t") if "\t" in raw else line.split(None, 4)
        if len(fields) < 3:
            raise AsnTableError(f"asn_table {path}, line {number}: expected range_start, "
                                f"range_end, AS_number, country, AS_description separated "
                                f"by tabs, got {line[:80]!r}")
        try:
            start, end = _address(fields[0].strip()), _address(fields[1].strip())
        except ValueError as exc:
            raise AsnTableError(f"asn_table {path}, line {number}: {exc}") from None
        try:
            asn = int(fields[2].strip().upper().removeprefix("AS"))
        except ValueError:
            raise AsnTableError(f"asn_table {path}, line {number}: AS number "
                                f"{fields[2].strip()!r} is not a number") from None
        if start.version != end.version:
            raise AsnTableError(f"asn_table {path}, line {number}: {start} and {end} are "
                                f"not of one address family")
        if int(start) > int(end):
            raise AsnTableError(f"asn_table {path}, line {number}: range starts after it "
                                f"ends ({start} > {end})")
        if asn == 0:
            continue  # "Not routed"
        name = fields[4].strip() if len(fields) > 4 else ""
        system = names.setdefault((asn, name), AS(asn, name))
        ranges.append((start.version, int(start), int(end), system, number))
    return AsnTable(path, ranges)


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> AsnTable:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise AsnTableError(f"asn_table {path}: cannot read it ({exc})") from None
    return parse(path, text)


def load_asn_table(path: str) -> AsnTable:
    """The table at ``path``, read once per process (again only if the file changed)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise AsnTableError(f"asn_table {path}: cannot read it ({exc.strerror})") from None
    return _load(path, st.st_mtime_ns, st.st_size)
