"""Per-key rate limits: requests per minute (RPM) and tokens per minute (TPM).

Algorithm: an exact sliding log over the last ``window`` seconds (60 by default). A
request is admitted when the key has fewer than ``rpm`` admitted requests and fewer than
``tpm`` tokens recorded in the window; it then counts as one request. Tokens are known
only after the response, so ``add_tokens`` records them then, and a key at or over its
TPM budget is refused on its next request until enough of them leave the window. (One
response may thus overshoot the TPM budget; the next request pays for it.) Refused
requests are not counted.

Reservations: ``reserve`` counts a request's worst case (n x max_tokens + prompt) in the
token log *before* it generates, refusing it when that would take the key over ``tpm``;
``settle`` then replaces the reserved amount with what was generated. Concurrent requests
therefore cannot overshoot the budget together (each sees the others' reservations),
and a request is charged what it cost even when its client leaves early. A reservation
is clamped to ``tpm`` so that one large request can still run when the window is empty.

``retry_after`` is exact: the time until the oldest entries that hold the key at its
limit leave the window. An entry exactly ``window`` seconds old has left it.

Why a sliding log rather than GCRA or fixed windows: GCRA bounds the rate but lets a key
send ``rpm`` at once and then ``rpm`` more over the next minute (2x in a 60 s span);
fixed windows let 2x through at a window edge. The log holds at most ``rpm`` timestamps
per key, which is small at the limits an API sets per key.

Stores (registry ``RATE_STORES``): ``memory`` (one process) and ``redis`` (shared by
replicas; each decision is one atomic Lua script, so the limit holds exactly across
replicas, timed by the Redis server's clock unless a clock is injected).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from distillguard.config import Settings, SettingsError
from distillguard.registry import Registry, RegistryError

Clock = Callable[[], float]

WINDOW_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Decision:
    """The verdict for one request.

    ``retry_after`` is in seconds (0 when allowed); ``reason`` says in words which limit
    refused it, e.g. "60 requests per minute" ("" when allowed); ``limit`` names it:
    ``"rpm"``, ``"tpm"`` or ``""``.
    """

    allowed: bool
    retry_after: float = 0.0
    reason: str = ""
    limit: str = ""


ALLOW = Decision(True)


@runtime_checkable
class RateStore(Protocol):
    """Where the sliding logs live. Each call is atomic for its key."""

    async def admit(self, key: str, *, rpm: int, tpm: int, window: float) -> Decision:
        """Count one request for ``key`` if it is under both limits (0 = no limit)."""

    async def add_tokens(self, key: str, n: int, *, window: float) -> None:
        """Record ``n`` tokens used by ``key`` now."""

    async def reserve(self, key: str, member: str, n: int, *, tpm: int,
                      window: float) -> Decision:
        """Record ``n`` tokens for ``key`` under ``member`` if the total stays within
        ``tpm``; else refuse with the time until it would."""

    async def settle(self, key: str, member: str, reserved: int, actual: int, *,
                     window: float) -> None:
        """Replace reservation ``member`` of ``reserved`` tokens by ``actual`` (recorded
        now if the reservation already left the window)."""

    async def close(self) -> None:
        """Release connections."""


@dataclasses.dataclass(frozen=True)
class Reservation:
    """Tokens held for one request until ``RateLimiter.settle``."""

    key: str
    member: str
    tokens: int


def _refusal(limit: str, amount: int, retry_after: float) -> Decision:
    what = "requests" if limit == "rpm" else "tokens"
    return Decision(False, max(retry_after, 0.0), f"{amount} {what} per minute", limit)


class MemoryRateStore:
    """Sliding logs in this process's memory (one gateway process)."""

    # Keys untouched for a window hold nothing; sweep them now and then so that a
    # stream of one-off keys does not grow memory forever.
    _SWEEP_EVERY = 10_000

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._requests: dict[str, deque[float]] = {}
        # Entries are [time, tokens, member]: a reservation is settled in place.
        self._tokens: dict[str, deque[list[Any]]] = {}
        self._token_totals: dict[str, int] = {}
        self._ops = 0

    async def admit(self, key: str, *, rpm: int, tpm: int, window: float) -> Decision:
        now = self.clock()
        self._maybe_sweep(now, window)
        if tpm > 0:
            total = self._trim_tokens(key, now - window)
            if total >= tpm:
                log = self._tokens[key]
                for ts, n, _ in log:
                    total -= n
                    if total < tpm:
                        return _refusal("tpm", tpm, ts + window - now)
        if rpm > 0:
            requests = self._requests.setdefault(key, deque())
            cutoff = now - window
            while requests and requests[0] <= cutoff:
                requests.popleft()
            if len(requests) >= rpm:
                # The entry whose departure brings the count below rpm.
                return _refusal("rpm", rpm, requests[len(requests) - rpm] + window - now)
            requests.append(now)
        return ALLOW

    async def add_tokens(self, key: str, n: int, *, window: float) -> None:
        if n <= 0:
            return
        now = self.clock()
        self._trim_tokens(key, now - window)
        self._tokens.setdefault(key, deque()).append([now, n, None])
        self._token_totals[key] = self._token_totals.get(key, 0) + n

    async def reserve(self, key: str, member: str, n: int, *, tpm: int,
                      window: float) -> Decision:
        now = self.clock()
        total = self._trim_tokens(key, now - window)
        if total + n > tpm:
            for ts, used, _ in self._tokens.get(key, ()):
                total -= used
                if total + n <= tpm:
                    return _refusal("tpm", tpm, ts + window - now)
            return _refusal("tpm", tpm, 0.0)
        self._tokens.setdefault(key, deque()).append([now, n, member])
        self._token_totals[key] = total + n
        return ALLOW

    async def settle(self, key: str, member: str, reserved: int, actual: int, *,
                     window: float) -> None:
        now = self.clock()
        self._trim_tokens(key, now - window)
        for entry in self._tokens.get(key, ()):
            if entry[2] == member:
                self._token_totals[key] += actual - entry[1]
                entry[1], entry[2] = actual, None
                return
        await self.add_tokens(key, actual, window=window)

    async def close(self) -> None:
        self._requests.clear()
        self._tokens.clear()
        self._token_totals.clear()

    def _trim_tokens(self, key: str, cutoff: float) -> int:
        log = self._tokens.get(key)
        if not log:
            return 0
        total = self._token_totals[key]
        while log and log[0][0] <= cutoff:
            total -= log.popleft()[1]
        self._token_totals[key] = total
        return total

    def _maybe_sweep(self, now: float, window: float) -> None:
        self._ops += 1
        if self._ops % self._SWEEP_EVERY:
            return
        cutoff = now - window
        for key in [k for k, log in self._requests.items() if not log or log[-1] <= cutoff]:
            del self._requests[key]
        for key in [k for k, log in self._tokens.items() if not log or log[-1][0] <= cutoff]:
            del self._tokens[key]
            del self._token_totals[key]


# KEYS: 1 request log (zset), 2 token log (zset of "id:n"), 3 token total (string).
# ARGV: now ("" = Redis server time), window, ...
_NOW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local window = tonumber(ARGV[2])
local cutoff = now - window
local ttl = math.ceil(window * 1000) + 1000
local function trim_tokens()
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  if #gone == 0 then
    return tonumber(redis.call('GET', KEYS[3]) or '0')
  end
  local freed = 0
  for _, member in ipairs(gone) do
    freed = freed + tonumber(string.match(member, ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  if redis.call('ZCARD', KEYS[2]) == 0 then
    redis.call('DEL', KEYS[3])
    return 0
  end
  return redis.call('DECRBY', KEYS[3], freed)
end
"""

# ARGV: now, window, rpm, tpm, member. Returns {allowed, retry_after (string), limit}.
_ADMIT = _NOW + """
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
if tpm > 0 then
  local total = trim_tokens()
  if total >= tpm then
    local log = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #log, 2 do
      total = total - tonumber(string.match(log[i], ':(%d+)$'))
      if total < tpm then
        return {0, tostring(tonumber(log[i + 1]) + window - now), 'tpm'}
      end
    end
  end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  local count = redis.call('ZCARD', KEYS[1])
  if count >= rpm then
    local entry = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
    return {0, tostring(tonumber(entry[2]) + window - now), 'rpm'}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {1, '0', ''}
"""

# ARGV: now, window, n, member.
_ADD_TOKENS = _NOW + """
trim_tokens()
redis.call('ZADD', KEYS[2], now, ARGV[4] .. ':' .. ARGV[3])
redis.call('INCRBY', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
"""


# ARGV: now, window, tpm, n, member. Returns {allowed, retry_after (string), limit}.
_RESERVE = _NOW + """
local tpm = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local total = trim_tokens()
if total + n > tpm then
  local log = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #log, 2 do
    total = total - tonumber(string.match(log[i], ':(%d+)$'))
    if total + n <= tpm then
      return {0, tostring(tonumber(log[i + 1]) + window - now), 'tpm'}
    end
  end
  return {0, '0', 'tpm'}
end
redis.call('ZADD', KEYS[2], now, ARGV[5] .. ':' .. ARGV[4])
redis.call('INCRBY', KEYS[3], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return {1, '0', ''}
"""

# ARGV: now, window, member, reserved, actual.
_SETTLE = _NOW + """
trim_tokens()
local old = ARGV[3] .. ':' .. ARGV[4]
local score = redis.call('ZSCORE', KEYS[2], old)
local actual = tonumber(ARGV[5])
if score then
  redis.call('ZREM', KEYS[2], old)
  redis.call('ZADD', KEYS[2], score, ARGV[3] .. ':' .. ARGV[5])
  redis.call('INCRBY', KEYS[3], actual - tonumber(ARGV[4]))
elseif actual > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[3] .. ':' .. ARGV[5])
  redis.call('INCRBY', KEYS[3], actual)
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
"""


class RedisRateStore:
    """Sliding logs in Redis, shared by every gateway replica.

    Keys are ``{prefix:key}:req``, ``:tok`` and ``:tokn`` (one hash slot per key, so the
    scripts also run on Redis Cluster) and expire a second after the window. ``clock``
    (tests) replaces the Redis server's clock.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 prefix: str = "distillguard:rl", clock: Clock | None = None,
                 client: Any = None) -> None:
        import redis.asyncio as redis_asyncio  # optional dependency: the `redis` extra

        self.prefix = prefix
        self.clock = clock
        self._redis = client if client is not None else redis_asyncio.from_url(url)
        self._admit = self._redis.register_script(_ADMIT)
        self._add = self._redis.register_script(_ADD_TOKENS)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        # Members must be unique even when two replicas log the same instant.
        self._member_prefix = os.urandom(6).hex()
        self._counter = itertools.count()

    def _keys(self, key: str) -> list[str]:
        base = f"{{{self.prefix}:{key}}}"
        return [base + ":req", base + ":tok", base + ":tokn"]

    def _now(self) -> str:
        return repr(self.clock()) if self.clock is not None else ""

    def _member(self) -> str:
        return f"{self._member_prefix}-{next(self._counter)}"

    async def admit(self, key: str, *, rpm: int, tpm: int, window: float) -> Decision:
        allowed, retry_after, limit = await self._admit(
            keys=self._keys(key), args=[self._now(), window, rpm, tpm, self._member()])
        if allowed:
            return ALLOW
        limit = limit.decode() if isinstance(limit, bytes) else str(limit)
        return _refusal(limit, rpm if limit == "rpm" else tpm, float(retry_after))

    async def add_tokens(self, key: str, n: int, *, window: float) -> None:
        if n <= 0:
            return
        await self._add(keys=self._keys(key), args=[self._now(), window, int(n),
                                                    self._member()])

    async def reserve(self, key: str, member: str, n: int, *, tpm: int,
                      window: float) -> Decision:
        allowed, retry_after, _ = await self._reserve(
            keys=self._keys(key), args=[self._now(), window, tpm, int(n), member])
        return ALLOW if allowed else _refusal("tpm", tpm, float(retry_after))

    async def settle(self, key: str, member: str, reserved: int, actual: int, *,
                     window: float) -> None:
        await self._settle(keys=self._keys(key), args=[self._now(), window, member,
                                                       int(reserved), int(actual)])

    async def close(self) -> None:
        await self._redis.aclose()


def _memory_from_settings(settings: Settings) -> RateStore:
    return MemoryRateStore()


def _redis_from_settings(settings: Settings) -> RateStore:
    return RedisRateStore(settings.redis_url.reveal(), prefix=settings.redis_key_prefix)


# Other packages add rate stores through the ``distillguard.rate_stores`` entry-point group.
RATE_STORES: Registry[Callable[[Settings], RateStore]] = Registry(
    "rate store", "distillguard.rate_stores")
RATE_STORES.register("memory", _memory_from_settings)
RATE_STORES.register("redis", _redis_from_settings)


def open_rate_store(settings: Settings) -> RateStore:
    """The store named by the ``rate_store`` setting."""
    try:
        factory = RATE_STORES.get(settings.rate_store)
    except RegistryError:
        raise SettingsError(f"setting 'rate_store': unknown store {settings.rate_store!r}; "
                            f"choose one of {', '.join(RATE_STORES.names())}") from None
    return factory(settings)


class RateLimiter:
    """Applies one RPM and one TPM limit per key over a ``RateStore``.

    ``rpm`` / ``tpm`` of 0 mean no limit; with both 0 the store is never touched.
    ``check`` and ``add_tokens`` accept a lower limit for one call (e.g. a throttle
    action on an account).
    """

    def __init__(self, store: RateStore, rpm: int, tpm: int,
                 window: float = WINDOW_SECONDS) -> None:
        self.store = store
        self.rpm = rpm
        self.tpm = tpm
        self.window = window
        self._members = itertools.count()
        self._member_prefix = os.urandom(6).hex()

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """Limiter with ``rate_limit_rpm``, ``rate_limit_tpm`` over ``rate_store``."""
        return cls(open_rate_store(settings), settings.rate_limit_rpm,
                   settings.rate_limit_tpm)

    async def check(self, key_id: str, *, rpm: int | None = None,
                    tpm: int | None = None) -> Decision:
        """Admission: count this request if ``key_id`` is under its limits."""
        rpm = self.rpm if rpm is None else rpm
        tpm = self.tpm if tpm is None else tpm
        if rpm <= 0 and tpm <= 0:
            return ALLOW
        return await self.store.admit(key_id, rpm=max(rpm, 0), tpm=max(tpm, 0),
                                      window=self.window)

    async def add_tokens(self, key_id: str, n: int, *, tpm: int | None = None) -> None:
        """After the response: count ``n`` tokens (prompt + completion) for ``key_id``.

        Nothing is recorded when no TPM limit applies (pass the same ``tpm`` override
        as to ``check``).
        """
        tpm = self.tpm if tpm is None else tpm
        if n > 0 and tpm > 0:
            await self.store.add_tokens(key_id, n, window=self.window)

    async def reserve(self, key_id: str, tokens: int, *,
                      tpm: int | None = None) -> tuple[Decision, Reservation | None]:
        """Before generating: hold ``tokens`` (the request's worst case, clamped to the
        budget) against ``key_id``'s TPM budget, or refuse. No TPM limit: no reservation."""
        tpm = self.tpm if tpm is None else tpm
        if tpm <= 0 or tokens <= 0:
            return ALLOW, None
        tokens = min(tokens, tpm)
        member = f"r{next(self._members)}-{self._member_prefix}"
        decision = await self.store.reserve(key_id, member, tokens, tpm=tpm,
                                            window=self.window)
        return decision, (Reservation(key_id, member, tokens) if decision.allowed else None)

    async def settle(self, reservation: Reservation, actual: int) -> None:
        """After the request (however it ended): charge ``actual`` tokens instead."""
        await self.store.settle(reservation.key, reservation.member, reservation.tokens,
                                max(0, int(actual)), window=self.window)

    async def close(self) -> None:
        """Close the store."""
        await self.store.close()
