"""`distillguard keys create | list | revoke`, as a user runs them."""

from __future__ import annotations

import json

import pytest

from distillguard.cli import main
from distillguard.telemetry.sqlite_store import SQLiteStore


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run the command line against a fresh data folder; return (rc, stdout, stderr)."""
    for name in list(__import__("os").environ):
        if name.startswith("DISTILLGUARD_"):
            monkeypatch.delenv(name)

    def run(*argv: str) -> tuple[int, str, str]:
        rc = main(["--data-dir", str(tmp_path), *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    run.data = tmp_path  # type: ignore[attr-defined]
    return run


def test_create_prints_the_key_alone_on_the_last_line(cli) -> None:
    rc, out, err = cli("keys", "create", "--account", "acme", "--name", "ci")
    assert rc == 0
    lines = out.splitlines()
    key = lines[-1]
    assert key.startswith("sk-dg-") and " " not in key
    assert "acme" in lines[0] and "not shown again" in lines[0]
    with SQLiteStore(cli.data) as store:
        record = store.lookup_key(key)
    assert record is not None and record.account == "acme" and record.name == "ci"
    assert record.key_id in lines[0]


def test_list_shows_ids_and_prefixes_but_never_the_key(cli) -> None:
    _, out, _ = cli("keys", "create", "--account", "acme")
    key = out.splitlines()[-1]
    cli("keys", "create", "--account", "globex")
    rc, out, _ = cli("keys", "list")
    assert rc == 0
    header, *rows = out.splitlines()
    assert header.split() == ["KEY_ID", "ACCOUNT", "PREFIX", "NAME", "CREATED", "REVOKED"]
    assert len(rows) == 2 and rows[0].split()[1] == "acme" and rows[1].split()[1] == "globex"
    assert key not in out and key[len("sk-dg-") + 4:] not in out
    assert rows[0].split()[2] == key[:10] + "..."

    rc, out, _ = cli("keys", "list", "--account", "globex", "--json")
    assert rc == 0
    (only,) = json.loads(out)
    assert only["account"] == "globex" and only["active"] is True
    assert set(only) == {"key_id", "account", "prefix", "created_at", "revoked_at", "name",
                         "active"}


def test_revoke_by_id_then_the_key_is_refused(cli) -> None:
    _, out, _ = cli("keys", "create", "--account", "acme")
    key = out.splitlines()[-1]
    with SQLiteStore(cli.data) as store:
        key_id = store.lookup_key(key).key_id
    rc, out, _ = cli("keys", "revoke", key_id)
    assert rc == 0 and f"Revoked key {key_id}" in out
    with SQLiteStore(cli.data) as store:
        assert store.lookup_key(key).revoked_at is not None
    rc, out, _ = cli("keys", "revoke", key_id)
    assert rc == 0 and "already revoked" in out
    _, out, _ = cli("keys", "list", "--json")
    assert json.loads(out)[0]["active"] is False


def test_revoking_an_unknown_id_fails_clearly(cli) -> None:
    rc, out, err = cli("keys", "revoke", "key_nope")
    assert rc == 1
    assert out == ""
    assert "no key with id 'key_nope'" in err and "Traceback" not in err


def test_a_bad_account_name_is_a_message_not_a_traceback(cli) -> None:
    rc, out, err = cli("keys", "create", "--account", "  ")
    assert rc == 2 and out == ""
    assert "account name must not be empty" in err


def test_keys_without_a_subcommand_is_a_usage_error(cli) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("keys")
    assert exit_info.value.code == 2


def test_an_unreachable_store_is_reported(cli, monkeypatch) -> None:
    monkeypatch.setenv("DISTILLGUARD_STORE", "postgres")
    monkeypatch.setenv("DISTILLGUARD_POSTGRES_DSN",
                       "host=127.0.0.1 port=1 user=nobody dbname=none connect_timeout=2")
    rc, out, err = cli("keys", "list")
    assert rc == 1 and out == ""
    assert "cannot open the postgres store" in err and "Traceback" not in err
