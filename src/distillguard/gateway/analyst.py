"""Admin routes for analysts: risk, signals, timelines, campaigns, actions, audit log.

All behind the admin token (``_require_admin``). The analyst's name for the audit log
comes from the ``analyst`` field of a body or the ``X-Analyst`` header (default
``admin``); the action's author is ``analyst:NAME``.

- ``GET    /admin/risk?limit=&offset=&min_risk=&action=&campaign=&signal=``
                                                     accounts ranked by risk, with reasons
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
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from distillguard.gateway import errors, queries
from distillguard.gateway.admin import _require_admin
from distillguard.gateway.routes import json_response, read_json, runtime_of
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


def _gateway(request: Request) -> Any:
    gateway = runtime_of(request)
    try:
        queries.parts(gateway)
    except RuntimeError as exc:
        raise errors.ServerError(str(exc)) from None
    return gateway


def _offset_param(request: Request) -> int:
    raw = request.query_params.get("offset", "0")
    if not raw.isdigit():
        raise errors.InvalidRequest("'offset' must be a non-negative integer", param="offset")
    return int(raw)


async def ranked(request: Request) -> Response:
    _require_admin(request)
    gateway = _gateway(request)
    limit = _int_param(request, "limit", 50)
    min_risk = _float_param(request, "min_risk", 0.0)
    filters = {k: request.query_params.get(k) for k in ("action", "campaign", "signal")}
    try:
        page = await asyncio.to_thread(
            queries.ranked_page, gateway, queries.risk_index(request.app),
            offset=_offset_param(request), limit=limit, min_risk=min_risk, **filters)
    except queries.QueryError as exc:
        raise errors.InvalidRequest(str(exc), param=exc.param) from None
    return json_response({"object": "list", **page})


async def account_detail(request: Request) -> Response:
    _require_admin(request)
    gateway = _gateway(request)
    name = request.path_params["name"]
    view = await asyncio.to_thread(queries.account_view, gateway, name)
    if view is None:
        raise errors.NotFound(f"no activity or action recorded for account {name!r}",
                              param="name", code="account_not_found")
    return json_response(view)


async def timeline(request: Request) -> Response:
    _require_admin(request)
    gateway = runtime_of(request)
    name = request.path_params["name"]
    limit = _int_param(request, "limit", 100)
    events = await asyncio.to_thread(queries.timeline, gateway, name, limit)
    return json_response({"object": "list", "account": name, "data": events})


async def campaigns(request: Request) -> Response:
    _require_admin(request)
    gateway = _gateway(request)
    return json_response({"object": "list", "data": queries.campaigns(gateway)})


async def campaign_detail(request: Request) -> Response:
    _require_admin(request)
    gateway = _gateway(request)
    view = queries.campaign_view(gateway, request.path_params["campaign_id"])
    if view is None:
        raise errors.NotFound("no campaign with this id in the latest detection run",
                              param="campaign_id", code="campaign_not_found")
    return json_response(view)


async def list_actions(request: Request) -> Response:
    _require_admin(request)
    gateway = _gateway(request)
    data = await asyncio.to_thread(queries.actions, gateway)
    return json_response({"object": "list", "data": data})


async def set_action(request: Request) -> Response:
    _require_admin(request)
    gateway = _gateway(request)
    name = request.path_params["name"]
    body = await read_json(request, gateway.settings.max_body_bytes)
    try:
        ttl = parse_duration(body.get("ttl"), "ttl")
    except ValueError as exc:
        raise errors.InvalidRequest(str(exc), param="ttl") from None
    analyst_name = _analyst(request, body)
    try:
        action = await asyncio.to_thread(
            queries.set_action, gateway, name, body.get("kind"), reason=body.get("reason"),
            analyst=analyst_name, ttl=ttl, rate_factor=body.get("rate_factor"))
    except queries.QueryError as exc:
        raise errors.InvalidRequest(str(exc), param=exc.param) from None
    return json_response(action, status=201)


async def lift_action(request: Request) -> Response:
    _require_admin(request)
    gateway = _gateway(request)
    name = request.path_params["name"]
    reason = request.query_params.get("reason", "lifted by analyst")
    lifted = await asyncio.to_thread(queries.lift, gateway, name, analyst=_analyst(request),
                                     reason=reason)
    if lifted is None:
        raise errors.NotFound(f"account {name!r} has no action to lift", param="name",
                              code="action_not_found")
    return json_response({"account": name, "lifted": lifted})


async def verify(request: Request) -> Response:
    _require_admin(request)
    gateway = _gateway(request)
    name = request.path_params["name"]
    current = gateway.policy.current_action(name)
    if current is None or current.kind != "challenge":
        raise errors.NotFound(f"account {name!r} has no pending challenge", param="name",
                              code="challenge_not_found")
    lifted = await asyncio.to_thread(queries.lift, gateway, name, analyst=_analyst(request),
                                     reason="account re-verified")
    return json_response({"account": name, "verified": True, "lifted": lifted})


async def audit(request: Request) -> Response:
    _require_admin(request)
    gateway = _gateway(request)
    limit = _int_param(request, "limit", 100)
    account = request.query_params.get("account")
    entries = await asyncio.to_thread(queries.audit, gateway, account=account, limit=limit)
    return json_response({"object": "list", "data": entries})


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
