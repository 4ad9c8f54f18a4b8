"""The admin API under /admin/: accounts and keys, behind the admin token."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from distillguard.gateway import errors
from distillguard.gateway.routes import json_response, read_json, runtime_of
from distillguard.telemetry.keys import MAX_ACCOUNT_CHARS, check_account_name


def _require_admin(request: Request) -> None:
    token = runtime_of(request).settings.admin_token
    if not token:
        raise errors.PermissionDenied(
            "the admin API is disabled: set the admin_token setting to enable it")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             token.reveal().encode()):
        raise errors.AuthenticationError("a valid admin token is required",
                                         code="invalid_admin_token")


def _key_json(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


async def list_keys(request: Request) -> Response:
    _require_admin(request)
    account = request.query_params.get("account")
    store = runtime_of(request).store
    records = await asyncio.to_thread(store.list_keys, account)
    return json_response({"object": "list", "data": [_key_json(r) for r in records]})


async def create_key(request: Request) -> Response:
    _require_admin(request)
    runtime = runtime_of(request)
    body = await read_json(request, runtime.settings.max_body_bytes)
    account = body.get("account")
    if not isinstance(account, str) or not account.strip():
        raise errors.InvalidRequest("'account' must be a non-empty string", param="account")
    try:
        account = check_account_name(account)
    except ValueError as exc:
        raise errors.InvalidRequest(f"'account': {exc}", param="account") from None
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise errors.InvalidRequest("'name' must be a string", param="name")
    if name is not None and (len(name) > MAX_ACCOUNT_CHARS or not name.isprintable()):
        # Listed in the admin API and the console: bounded and on one line.
        raise errors.InvalidRequest(f"'name' must be at most {MAX_ACCOUNT_CHARS} printable "
                                    "characters", param="name")
    record, key = await asyncio.to_thread(runtime.store.create_key, account,
                                          name=name)
    # The only time the key is shown: the store keeps its hash.
    return json_response({**_key_json(record), "key": key}, status=201)


async def revoke_key(request: Request) -> Response:
    _require_admin(request)
    runtime = runtime_of(request)
    key_id = request.path_params["key_id"]
    if not await asyncio.to_thread(runtime.store.revoke_key, key_id):
        raise errors.NotFound(f"no active key with id {key_id!r}", param="key_id",
                              code="key_not_found")
    runtime.keys.clear()
    return json_response({"key_id": key_id, "revoked": True})


async def list_accounts(request: Request) -> Response:
    _require_admin(request)
    store = runtime_of(request).store
    accounts = await asyncio.to_thread(store.list_accounts)
    return json_response({"object": "list",
                          "data": [dataclasses.asdict(a) for a in accounts]})


ROUTES = [
    Route("/admin/keys", list_keys, methods=["GET"]),
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
    Route("/admin/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
    Route("/admin/accounts", list_accounts, methods=["GET"]),
]
