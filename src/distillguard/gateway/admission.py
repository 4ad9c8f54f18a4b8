"""Admission: may this request proceed now? Plain functions, shared by every caller.

The ASGI ``Admission`` middleware and the simulator's replay mode both call ``admit``,
so a simulated request is refused exactly as a real one would be, with the same status
and error code. Each check raises the typed ``APIError`` the client gets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from distillguard.gateway import errors

if TYPE_CHECKING:
    from distillguard.gateway.context import RequestContext
    from distillguard.policy.engine import PolicyEngine
    from distillguard.policy.ratelimit import RateLimiter
    from distillguard.telemetry.writer import EventWriter

NEUTRAL_BLOCK = "This account cannot use the API. Contact support if you think this is a mistake."
CHALLENGE = "This account must be verified again before it can use the API."
ALLOWANCE = ("This account is new and has been served the completion tokens a new account "
             "may take, so it is slowed down until it is established or an administrator "
             "raises its limit.")
BACKLOG_RETRY_S = 5


def _retry_s(seconds: float | None) -> int:
    return max(1, int((seconds or 1.0) + 0.999))


def admit(policy: PolicyEngine, ctx: RequestContext, *,
          step_up_url: Callable[[str], str | None] | None = None) -> None:
    """Apply the account's current action (block, challenge, throttle) to the request.

    Notes the action on ``ctx`` (routes read it for degrade); raises ``PermissionDenied``
    or ``RateLimited`` when the request may not proceed. ``step_up_url`` gives a
    challenged account the page where it verifies itself (sign-up's step-up).
    """
    if ctx.account is None:
        return
    decision = policy.admit(ctx.account)
    action = decision.action
    if action is not None:
        ctx.action = action.kind
    if decision.allowed:
        return
    kind = action.kind if action is not None else "block"
    if kind == "block":
        raise errors.PermissionDenied(NEUTRAL_BLOCK, code="account_blocked")
    if kind == "challenge":
        url = step_up_url(ctx.account) if step_up_url is not None else None
        raise errors.PermissionDenied(
            CHALLENGE + (f" Verify it at {url}" if url else ""),
            code="account_challenge_required",
            headers={"Link": f'<{url}>; rel="verify"'} if url else None)
    retry = _retry_s(decision.retry_after)
    headers = {"Retry-After": str(retry)}
    if action is not None and _by_allowance(policy, action.author):
        # The allowance is documented; saying so lets a new customer ask for more.
        raise errors.RateLimited(f"{ALLOWANCE} Try again in {retry} s.",
                                 code="new_account_allowance", headers=headers)
    raise errors.RateLimited(f"Rate limit reached for this account. Try again in {retry} s.",
                             headers=headers)


def _by_allowance(policy: PolicyEngine, author: str) -> bool:
    """Whether a throttle was set by a new-account allowance rule (``Rule.max_age``)."""
    return any(author == r.author for r in policy.rules if r.max_age is not None)


async def check_rate(limiter: RateLimiter, ctx: RequestContext) -> None:
    """The key's own rate limits (``rate_limit_rpm`` / ``rate_limit_tpm``)."""
    if ctx.key_id is None:
        return
    decision = await limiter.check(ctx.key_id)
    if not decision.allowed:
        retry = _retry_s(decision.retry_after)
        raise errors.RateLimited(f"Rate limit reached for this key ({decision.reason}). "
                                 f"Try again in {retry} s.",
                                 headers={"Retry-After": str(retry)})


def check_backlog(writer: EventWriter) -> None:
    """Refuse new work while the event writer is backlogged (its overflow policy)."""
    if writer.backlogged:
        raise errors.Overloaded(
            "The server is busy recording earlier requests. Try again in "
            f"{BACKLOG_RETRY_S} s.", headers={"Retry-After": str(BACKLOG_RETRY_S)})
