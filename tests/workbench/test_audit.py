"""The hash-chained audit trail: verification, tamper detection past the database's own
guard, the ``txwatch audit verify`` command, and concurrent appends."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from workbench import audit
from workbench.db import Database
from workbench.models import AuditRow


def _append(db: Database, n: int, start: int = 0) -> list[int]:
    ids = []
    for i in range(start, start + n):
        with db.transaction() as s:
            row = audit.record(s, f"user{i % 3}", "dispose_alert", "alert", f"ev-{i}",
                               before={"decision": None}, after={"decision": "confirmed", "n": i, "note": "ok é"},
                               address="127.0.0.1")
            ids.append(row.id)
    return ids


def _verify(db: Database) -> audit.Verdict:
    with db.sessions() as s:
        return audit.verify(s)


def _bypass(db: Database, sql: str, **params) -> None:
    """Run ``sql`` on the audit table past its append-only guard (what an attacker with the
    database file or the owner's role could do); the guard is put back afterwards."""
    if db.engine.dialect.name == "sqlite":
        db.engine.dispose()  # no pooled connection holds the file
        conn = sqlite3.connect(make_url(str(db.engine.url)).database)
        try:
            conn.execute("DROP TRIGGER audit_no_update")
            conn.execute("DROP TRIGGER audit_no_delete")
            conn.execute(sql, params)
            conn.execute("CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
                         "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END")
            conn.execute("CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
                         "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END")
            conn.commit()
        finally:
            conn.close()
    else:
        with db.engine.begin() as c:
            c.execute(text("ALTER TABLE audit DISABLE TRIGGER audit_append_only"))
            c.execute(text(sql), params)
            c.execute(text("ALTER TABLE audit ENABLE TRIGGER audit_append_only"))


def _set_after(db: Database, row_id: int, after_json: str) -> None:
    if db.engine.dialect.name == "sqlite":
        _bypass(db, f"UPDATE audit SET after = :v WHERE id = {int(row_id)}", v=after_json)
    else:
        _bypass(db, f"UPDATE audit SET after = CAST(:v AS JSON) WHERE id = {int(row_id)}", v=after_json)


def test_a_chain_of_records_verifies(db):
    assert _verify(db) == audit.Verdict(0, True)
    ids = _append(db, 7)
    verdict = _verify(db)
    assert verdict == audit.Verdict(7, True)
    with db.sessions() as s:
        rows = s.execute(select(AuditRow).order_by(AuditRow.id)).scalars().all()
    assert [r.id for r in rows] == ids
    assert rows[0].prev_hash == audit.GENESIS
    for before, row in zip(rows, rows[1:]):
        assert row.prev_hash == before.hash
    assert len({r.hash for r in rows}) == 7
    assert rows[3].after == {"decision": "confirmed", "n": 3, "note": "ok é"}
    assert rows[3].at.tzinfo is not None


def test_a_record_commits_with_its_transaction_or_not_at_all(db):
    _append(db, 2)
    with pytest.raises(RuntimeError):
        with db.transaction() as s:
            audit.record(s, "ann", "claim", "case", 1)
            raise RuntimeError("the action failed")
    assert _verify(db) == audit.Verdict(2, True)
    _append(db, 1, start=10)
    assert _verify(db) == audit.Verdict(3, True)


def test_an_edited_row_is_found(db):
    ids = _append(db, 5)
    target = ids[2]
    _set_after(db, target, '{"decision": "false_positive", "n": 2, "note": "ok é"}')
    with db.sessions() as s:
        assert s.get(AuditRow, target).after["decision"] == "false_positive"  # the edit took
    verdict = _verify(db)
    assert not verdict.ok
    assert verdict.first_bad_id == target
    assert verdict.rows == 3
    assert "edited" in verdict.problem


def test_an_edit_that_keeps_the_json_equal_is_not_flagged(db):
    # the hash covers the content, not its text: whitespace or key order in the stored JSON is no tampering
    ids = _append(db, 3)
    _set_after(db, ids[1], '{"note": "ok é",   "n": 1, "decision": "confirmed"}')
    assert _verify(db) == audit.Verdict(3, True)


def test_a_deleted_middle_row_breaks_the_link_of_the_next(db):
    ids = _append(db, 5)
    _bypass(db, f"DELETE FROM audit WHERE id = {ids[2]}")
    verdict = _verify(db)
    assert not verdict.ok
    assert verdict.first_bad_id == ids[3]
    assert "link" in verdict.problem


def test_a_deleted_first_row_is_found(db):
    ids = _append(db, 3)
    _bypass(db, f"DELETE FROM audit WHERE id = {ids[0]}")
    verdict = _verify(db)
    assert (verdict.ok, verdict.first_bad_id) == (False, ids[1])


def test_a_rehashed_row_still_breaks_the_next_link(db):
    # an attacker who edits a row and recomputes its own hash breaks the row after it
    ids = _append(db, 4)
    with db.sessions() as s:
        row = s.get(AuditRow, ids[1])
        content = audit._content(row) | {"actor": "mallory"}
        forged = audit.chain_hash(row.prev_hash, content)
    _bypass(db, f"UPDATE audit SET actor = 'mallory', hash = '{forged}' WHERE id = {ids[1]}")
    verdict = _verify(db)
    assert (verdict.ok, verdict.first_bad_id) == (False, ids[2])
    assert "link" in verdict.problem


def test_audit_verify_command(db, database_url, monkeypatch, capsys):
    from txwatch.cli import main

    monkeypatch.setenv("TXWATCH_DATABASE_URL", database_url)
    ids = _append(db, 4)
    assert main(["audit", "verify"]) == 0
    out = capsys.readouterr()
    assert "audit trail intact: 4 rows" in out.out
    assert out.err == ""

    _set_after(db, ids[1], '{"decision": "escalated"}')
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"txwatch: error: audit trail broken at row {ids[1]}: ")
    assert "intact" not in out.out


def test_audit_verify_command_after_a_deletion(db, database_url, monkeypatch, capsys):
    from txwatch.cli import main

    monkeypatch.setenv("TXWATCH_DATABASE_URL", database_url)
    ids = _append(db, 4)
    _bypass(db, f"DELETE FROM audit WHERE id = {ids[1]}")
    assert main(["audit", "verify"]) == 1
    assert f"txwatch: error: audit trail broken at row {ids[2]}: " in capsys.readouterr().err


def test_the_cli_records_user_actions_in_the_chain(db, database_url, monkeypatch, capsys):
    from argon2 import PasswordHasher

    from txwatch.cli import main
    from workbench import auth

    monkeypatch.setattr(auth, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    monkeypatch.setenv("TXWATCH_DATABASE_URL", database_url)
    monkeypatch.setenv("WB_PW", "a-long-password")
    monkeypatch.setenv("USER", "ops")
    assert main(["users", "add", "kim", "--role", "reviewer", "--password-env", "WB_PW"]) == 0
    assert main(["users", "role", "kim", "--role", "approver"]) == 0
    assert main(["users", "disable", "kim"]) == 0
    capsys.readouterr()
    with db.sessions() as s:
        rows = s.execute(select(AuditRow).order_by(AuditRow.id)).scalars().all()
    assert [(r.actor, r.action, r.object_id) for r in rows] == [
        ("cli:ops", "user_add", "kim"), ("cli:ops", "user_role", "kim"), ("cli:ops", "user_disable", "kim")]
    assert rows[1].before == {"role": "reviewer", "active": True}
    assert rows[1].after == {"role": "approver", "active": True}
    assert main(["audit", "verify"]) == 0
    assert "3 rows" in capsys.readouterr().out


def _concurrent_appends(db: Database, threads: int = 4, each: int = 25) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(each):
                with db.transaction() as s:
                    audit.record(s, f"t{t}", "view", "case", i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    return errors


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_concurrent_appends_keep_the_chain_linear_on_postgresql(db):
    assert _concurrent_appends(db) == []
    assert _verify(db) == audit.Verdict(100, True)
    with db.sessions() as s:
        prevs = s.execute(select(AuditRow.prev_hash)).scalars().all()
    assert len(set(prevs)) == 100  # no two rows hang off the same one: no fork


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_concurrent_appends_keep_the_chain_linear_on_sqlite(db):
    # the embedded default: a web server's threads share one SQLite file
    assert _concurrent_appends(db) == []
    assert _verify(db) == audit.Verdict(100, True)


def test_removing_the_last_rows_changes_the_head_an_operator_kept(db, database_url):
    """A truncated chain still verifies; its head hash is what gives it away."""
    ids = _append(db, 4)
    head = _verify(db).head
    with db.sessions() as s:
        assert head == s.get(AuditRow, ids[-1]).hash
    _bypass(db, f"DELETE FROM audit WHERE id = {ids[-1]}")
    verdict = _verify(db)
    assert verdict.ok and verdict.rows == 3 and verdict.head != head
