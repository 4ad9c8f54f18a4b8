"""The admin API: keys and accounts behind the admin token."""

from __future__ import annotations

from conftest import ADMIN_TOKEN

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_create_list_revoke_keys_over_http(harness):
    async with harness.http(headers=ADMIN) as http:
        created = await http.post("/admin/keys", json={"account": "carol", "name": "ci"})
        assert created.status_code == 201
        new = created.json()
        assert new["key"].startswith("sk-")
        assert new["account"] == "carol"
        listed = (await http.get("/admin/keys", params={"account": "carol"})).json()["data"]
        assert [k["key_id"] for k in listed] == [new["key_id"]]
        assert all("key" not in k and "hash" not in str(k) for k in listed)
        accounts = (await http.get("/admin/accounts")).json()["data"]
        assert "carol" in [a["name"] for a in accounts]

    client = harness.sdk(new["key"])
    assert (await client.models.list()).data
    async with harness.http(headers=ADMIN) as http:
        revoked = await http.delete(f"/admin/keys/{new['key_id']}")
        assert revoked.status_code == 200
        again = await http.delete("/admin/keys/key_doesnotexist")
        assert again.status_code == 404
    async with harness.http(headers={"authorization": f"Bearer {new['key']}"}) as http:
        assert (await http.get("/v1/models")).status_code == 401


async def test_admin_needs_the_token(harness):
    async with harness.http(headers={"authorization": "Bearer wrong"}) as http:
        response = await http.get("/admin/keys")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_admin_token"


async def test_admin_disabled_without_a_token(harness_factory):
    harness = await harness_factory(admin_token="")
    async with harness.http(headers={"authorization": "Bearer "}) as http:
        response = await http.post("/admin/keys", json={"account": "x"})
    assert response.status_code == 403


async def test_bad_admin_body(harness):
    async with harness.http(headers=ADMIN) as http:
        response = await http.post("/admin/keys", json={"account": 5})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "account"
