"""Admin routes for analysts: risk, signals, timelines, campaigns, actions, audit log.

All behind the admin token (``_require_admin``). The analyst's name for the audit log
comes from the ``analyst`` field of a body or the ``X-Analyst`` header (default
``admin``); the action's author is ``analyst:NAME``.

- ``GET    /admin/risk?limit=&min_risk=``          accounts ranked by risk, with reasons
- ``GET    /admin/accounts/{name}``                 risk, every signal, campaign, action
- ``GET    /admin/accounts/{name}/timeline?limit=`` the account's latest events
- ``GET    /admin/campaigns`` / ``/admin/campaigns/{id}``  members and evidence
- ``GET    /admin/actions``                          actions in force
- ``POST   /admin/accounts/{name}/actions``          set: {kind, reason, ttl, rate_factor}
- ``DELETE /admin/accounts/{name}/actions``          lift
- ``POST   /admin/accounts/{name}/verify``           lift a challenge
- ``GET    /admin/audit?account=&limit=``            the audit log, newest first
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from distillguard.gateway import errors
from distillguard.gateway.admin import _require_admin
from distillguard.gateway.routes import gateway_of, json_response, read_json
from distillguard.policy.actions import KINDS
from distillguard.policy.rules import parse_duration

_NAME = re.compile(r"^[\w.@-]{1,100}$")
MAX_LIMIT = 1000


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.InvalidRequest(f"'{name}' must be an integer", param=name) from None
    if not 1 <= value <= MAX_LIMIT:
        raise errors.InvalidRequest(f"'{name}' must be between 1 and {MAX_LIMIT}", param=name)
    return value


def _float_param(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise errors.InvalidRequest(f"'{name}' must be a number", param=name) from None
    if not 0.0 <= value <= 1.0:
        raise errors.InvalidRequest(f"'{name}' must lie in [0, 1]", param=name)
    return value


def _analyst(request: Request, body: dict[str, Any] | None = None) -> str:
    name = (body or {}).get("analyst", request.headers.get("x-analyst", "admin"))
    if not isinstance(name, str) or not _NAME.match(name):
        raise errors.InvalidRequest("'analyst' must be 1-100 letters, digits, '.', '@', "
                                    "'_' or '-'", param="analyst")
    return name


def _parts(request: Request) -> tuple[Any, Any]:
    gateway = gateway_of(request)
    detection = getattr(gateway, "detection", None)
    policy = getattr(gateway, "policy", None)
    if detection is None or policy is None:
        raise errors.ServerError("detection and policy are not running in this gateway")
    return detection, policy


def _action_json(action: Any) -> dict[str, Any] | None:
    return action.to_dict() if action is not None else None


async def ranked(request: Request) -> Response:
    _require_admin(request)
    detection, policy = _parts(request)
    limit = _int_param(request, "limit", 50)
    min_risk = _float_param(request, "min_risk", 0.0)
    risks = await asyncio.to_thread(detection.ranked, limit, min_risk)
    data = [{**r.to_dict(), "action": _action_json(policy.current_action(r.account))}
            for r in risks]
    return json_response({"object": "list", "data": data})


async def account_detail(request: Request) -> Response:
    _require_admin(request)
    detection, policy = _parts(request)
    name = request.path_params["name"]
    risk = await asyncio.to_thread(detection.account_risk, name)
    if risk.events == 0 and policy.current_action(name) is None:
        raise errors.NotFound(f"no activity or action recorded for account {name!r}",
                              param="name", code="account_not_found")
    signals = [dataclasses.asdict(s) for s in detection.signals_of(name)]
    campaign = detection.campaign(risk.campaign) if risk.campaign else None
    return json_response({
        **risk.to_dict(), "signals": signals,
        "campaign": campaign.to_dict() if campaign else None,
        "action": _action_json(policy.current_action(name))})


async def timeline(request: Request) -> Response:
    _require_admin(request)
    gateway = gateway_of(request)
    name = request.path_params["name"]
    limit = _int_param(request, "limit", 100)

    def latest() -> list[dict[str, Any]]:
        from collections import deque

        # The store streams in time order; keep only the tail (bounded memory).
        tail = deque(gateway.store.iter_events(account=name), maxlen=limit)
        return [e.to_dict() for e in reversed(tail)]

    events = await asyncio.to_thread(latest)
    return json_response({"object": "list", "account": name, "data": events})


async def campaigns(request: Request) -> Response:
    _require_admin(request)
    detection, _ = _parts(request)
    return json_response({"object": "list",
                          "data": [c.to_dict() for c in detection.campaigns()]})


async def campaign_detail(request: Request) -> Response:
    _require_admin(request)
    detection, policy = _parts(request)
    campaign = detection.campaign(request.path_params["campaign_id"])
    if campaign is None:
        raise errors.NotFound("no campaign with this id in the latest detection run",
                              param="campaign_id", code="campaign_not_found")
    members = [{"account": m, "action": _action_json(policy.current_action(m))}
               for m in campaign.members]
    return json_response({**campaign.to_dict(), "member_actions": members})


async def list_actions(request: Request) -> Response:
    _require_admin(request)
    _, policy = _parts(request)
    actions = await asyncio.to_thread(policy.actions)
    return json_response({"object": "list", "data": [a.to_dict() for a in actions]})


async def set_action(request: Request) -> Response:
    _require_admin(request)
    gateway = gateway_of(request)
    _, policy = _parts(request)
    name = request.path_params["name"]
    body = await read_json(request, gateway.settings.max_body_bytes)
    kind = body.get("kind")
    if kind not in KINDS:
        raise errors.InvalidRequest(f"'kind' must be one of {', '.join(KINDS)}", param="kind")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise errors.InvalidRequest("'reason' must be a non-empty string", param="reason")
    try:
        ttl = parse_duration(body.get("ttl"), "ttl")
    except ValueError as exc:
        raise errors.InvalidRequest(str(exc), param="ttl") from None
    rate_factor = body.get("rate_factor")
    if rate_factor is not None and (isinstance(rate_factor, bool)
                                    or not isinstance(rate_factor, (int, float))):
        raise errors.InvalidRequest("'rate_factor' must be a number", param="rate_factor")
    author = f"analyst:{_analyst(request, body)}"
    try:
        action = await asyncio.to_thread(
            policy.set_action, name, kind, reason=reason.strip(), author=author, ttl=ttl,
            rate_factor=None if rate_factor is None else float(rate_factor))
    except ValueError as exc:
        raise errors.InvalidRequest(str(exc), param="rate_factor") from None
    return json_response(action.to_dict(), status=201)


async def lift_action(request: Request) -> Response:
    _require_admin(request)
    _, policy = _parts(request)
    name = request.path_params["name"]
    reason = request.query_params.get("reason", "lifted by analyst")
    author = f"analyst:{_analyst(request)}"
    lifted = await asyncio.to_thread(policy.lift, name, author=author, reason=reason)
    if lifted is None:
        raise errors.NotFound(f"account {name!r} has no action to lift", param="name",
                              code="action_not_found")
    return json_response({"account": name, "lifted": lifted.to_dict()})


async def verify(request: Request) -> Response:
    _require_admin(request)
    _, policy = _parts(request)
    name = request.path_params["name"]
    current = policy.current_action(name)
    if current is None or current.kind != "challenge":
        raise errors.NotFound(f"account {name!r} has no pending challenge", param="name",
                              code="challenge_not_found")
    author = f"analyst:{_analyst(request)}"
    lifted = await asyncio.to_thread(policy.lift, name, author=author,
                                     reason="account re-verified")
    return json_response({"account": name, "verified": True,
                          "lifted": _action_json(lifted)})


async def audit(request: Request) -> Response:
    _require_admin(request)
    _, policy = _parts(request)
    limit = _int_param(request, "limit", 100)
    account = request.query_params.get("account")
    entries = await asyncio.to_thread(policy.audit, account=account, limit=limit)
    return json_response({"object": "list", "data": [e.to_dict() for e in entries]})


ROUTES = [
    Route("/admin/risk", ranked, methods=["GET"]),
    Route("/admin/accounts/{name}", account_detail, methods=["GET"]),
    Route("/admin/accounts/{name}/timeline", timeline, methods=["GET"]),
    Route("/admin/accounts/{name}/actions", set_action, methods=["POST"]),
    Route("/admin/accounts/{name}/actions", lift_action, methods=["DELETE"]),
    Route("/admin/accounts/{name}/verify", verify, methods=["POST"]),
    Route("/admin/campaigns", campaigns, methods=["GET"]),
    Route("/admin/campaigns/{campaign_id}", campaign_detail, methods=["GET"]),
    Route("/admin/actions", list_actions, methods=["GET"]),
    Route("/admin/audit", audit, methods=["GET"]),
]
