"""Proof of work: ALTCHA challenges (PBKDF2/SHA-256) whose cost follows a level, and the
no-JavaScript wait ticket that stands in for them.

A level ``L`` asks for ``256 * cost * 2**L`` PBKDF2 iterations on average: the derived key
must start with ``2 + L // 4`` zero hex digits (16 times the tries per digit) and each
try costs ``cost * 2**(L % 4)`` iterations. The split keeps the server's one check
cheap (at most 8 times the base cost) while the client's expected work doubles per level.

The wait ticket is for a visitor whose browser runs no script: the server signs "this
address may continue after T seconds" and the form can be sent again after T. Waiting
costs a person nothing but time; a bot that waits in parallel is held by the global cap
on tickets per minute and by the same velocity limits as everyone else.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import time

import altcha
import orjson

ALGORITHM = "PBKDF2/SHA-256"
CHALLENGE_TTL = 600  # seconds a challenge may be solved in


@dataclasses.dataclass(frozen=True)
class Solved:
    """A verified puzzle: its level and a digest that identifies it (for replay checks)."""

    level: int
    digest: str
    expires_at: float


class PuzzleError(ValueError):
    """The puzzle answer is missing, malformed, expired, forged or wrong; the message
    says which, and ``code`` names it for the client."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class Puzzles:
    """Issues and checks ALTCHA challenges and wait tickets under one HMAC key."""

    def __init__(self, key: bytes, *, cost: int, max_level: int, nojs_wait: float) -> None:
        self._key = key
        self.cost = cost
        self.max_level = max_level
        self.nojs_wait = nojs_wait

    def clamp(self, level: int) -> int:
        return max(0, min(self.max_level, level))

    def parameters(self, level: int) -> tuple[str, int]:
        """Key prefix and per-try cost of ``level``."""
        level = self.clamp(level)
        return "0" * (2 + level // 4), self.cost * 2 ** (level % 4)

    def expected_iterations(self, level: int) -> int:
        prefix, cost = self.parameters(level)
        return 16 ** len(prefix) * cost

    def challenge(self, level: int, *, purpose: str = "signup") -> dict:
        """A new challenge in the ALTCHA v2 JSON format, signed, expiring."""
        level = self.clamp(level)
        prefix, cost = self.parameters(level)
        made = altcha.create_challenge(
            ALGORITHM, cost, key_prefix=prefix, expires_at=int(time.time()) + CHALLENGE_TTL,
            data={"level": str(level), "purpose": purpose}, hmac_secret=self._key)
        return made.to_dict()

    def verify(self, payload: object, *, purpose: str = "signup") -> Solved:
        """Check a widget payload (base64 JSON); PuzzleError when it does not hold."""
        if not isinstance(payload, str) or not payload.strip():
            raise PuzzleError("'altcha' must be the solved puzzle from GET /signup/challenge",
                              "altcha_required")
        if len(payload) > 4096:
            raise PuzzleError("'altcha' is too long to be a puzzle answer", "invalid_altcha")
        result = altcha.verify_solution(payload.strip(), self._key)
        if result.expired:
            raise PuzzleError("the puzzle expired; fetch a new one", "altcha_expired")
        if not result.verified:
            raise PuzzleError("the puzzle answer is not valid", "invalid_altcha")
        params = altcha.Payload.from_base64(payload.strip()).challenge.parameters
        data = params.data or {}
        if data.get("purpose") != purpose:
            raise PuzzleError(f"this puzzle was not issued for {purpose}", "invalid_altcha")
        digest = hashlib.sha256(f"{params.nonce}:{params.salt}".encode()).hexdigest()
        return Solved(int(data.get("level", 0)), digest, float(params.expires_at or 0))

    # --- the no-JavaScript path ------------------------------------------------------
    def wait_seconds(self, level: int) -> float:
        return self.nojs_wait * 2 ** self.clamp(level)

    def ticket(self, email: str, level: int, *, purpose: str = "signup",
               now: float | None = None) -> tuple[str, float]:
        """A signed ticket valid after the level's wait; returns it and the wait."""
        now = time.time() if now is None else now
        wait = self.wait_seconds(level)
        body = orjson.dumps({"e": _email_tag(email), "nb": now + wait,
                             "x": now + wait + CHALLENGE_TTL, "l": self.clamp(level),
                             "p": purpose})
        encoded = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return f"{encoded}.{self._sign(encoded)}", wait

    def redeem(self, ticket: object, email: str, *, purpose: str = "signup",
               now: float | None = None) -> Solved:
        """Check a wait ticket; PuzzleError when forged, for another address, early or old."""
        now = time.time() if now is None else now
        if not isinstance(ticket, str) or "." not in ticket or len(ticket) > 1024:
            raise PuzzleError("'ticket' is not a wait ticket from this server",
                              "invalid_ticket")
        encoded, _, signature = ticket.partition(".")
        if not hmac.compare_digest(signature, self._sign(encoded)):
            raise PuzzleError("'ticket' is not a wait ticket from this server",
                              "invalid_ticket")
        body = orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        if body["e"] != _email_tag(email) or body.get("p") != purpose:
            raise PuzzleError("this wait ticket was issued for another address",
                              "invalid_ticket")
        if now < body["nb"]:
            raise PuzzleError(f"please wait {body['nb'] - now:.0f} more seconds, then send "
                              "the form again", "ticket_not_ready")
        if now > body["x"]:
            raise PuzzleError("this wait ticket expired; start again", "ticket_expired")
        return Solved(int(body["l"]), hashlib.sha256(ticket.encode()).hexdigest(),
                      float(body["x"]))

    def _sign(self, encoded: str) -> str:
        return hmac.new(self._key, b"ticket:" + encoded.encode(), hashlib.sha256).hexdigest()


def _email_tag(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()[:24]
