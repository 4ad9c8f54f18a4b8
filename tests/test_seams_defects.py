"""Defects found in review, each reproduced before it was fixed."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import ADMIN_TOKEN
from distillguard.watermark.keys import KEY_FILE_NAME, KeyRing

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize("account", ["a" * 201, "line\nbreak", "tab\there"])
async def test_admin_key_for_a_bad_account_name_is_a_400_naming_account(harness, account):
    async with harness.http(headers=ADMIN) as http:
        response = await http.post("/admin/keys", json={"account": account})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "account"
        assert "account" in error["message"]
        accounts = (await http.get("/admin/accounts")).json()["data"]
    assert accounts == []  # nothing half-created


@pytest.mark.parametrize("name", ["n" * 201, "two\nlines"])
async def test_admin_key_with_a_bad_name_is_a_400_naming_name(harness, name):
    async with harness.http(headers=ADMIN) as http:
        response = await http.post("/admin/keys", json={"account": "bob", "name": name})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "name"
        ok = await http.post("/admin/keys", json={"account": "bob", "name": "ci key"})
        assert ok.status_code == 201


async def test_trailing_slash_is_not_redirected_to_the_host_header(harness):
    async with harness.http(headers={**ADMIN, "host": "evil.example"}) as http:
        response = await http.get("/admin/accounts/", follow_redirects=False)
    assert "evil.example" not in response.headers.get("location", "")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "/admin/accounts/" in response.json()["error"]["message"]


async def test_405_names_the_allowed_methods(harness):
    user = {"authorization": f"Bearer {harness.key()}"}
    async with harness.http(headers=user) as http:
        response = await http.delete("/v1/models")
    async with harness.http(headers=ADMIN) as http:
        keys = await http.put("/admin/keys", json={})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["error"]["message"] == "Method DELETE is not allowed on /v1/models"
    assert keys.status_code == 405
    assert keys.headers["allow"] == "GET, HEAD, POST"


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_state_files_are_private_even_in_an_existing_open_folder(
        harness_factory, make_settings, tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    old = data / "events.db"
    old.write_bytes(b"")
    os.chmod(old, 0o644)
    previous = os.umask(0o022)
    try:
        harness = await harness_factory()
        key = harness.key("mode-check")
        assert (await harness.sdk(key).models.list()).data
        # The echo backend does not watermark; the key file is created the same way.
        KeyRing.load_or_create(data / KEY_FILE_NAME, cohorts=4)
    finally:
        os.umask(previous)
    assert _mode(data) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"events.db", "control.db", "policy.db", KEY_FILE_NAME,
                                       "events.db-wal"}, files
    for path in files:
        assert _mode(path) == 0o600, (path.name, oct(_mode(path)))
    assert "events.db" in caplog.text and "0644" in caplog.text


def test_signup_store_is_private_in_an_open_folder(tmp_path):
    from distillguard.signup.store import SIGNUP_FILE, SQLiteSignupStore

    folder = tmp_path / "data"
    folder.mkdir()
    os.chmod(folder, 0o755)
    previous = os.umask(0o022)
    try:
        SQLiteSignupStore(folder).close()
    finally:
        os.umask(previous)
    assert _mode(folder) == 0o700
    assert _mode(folder / SIGNUP_FILE) == 0o600
