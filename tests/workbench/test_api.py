"""The workbench's JSON API (``/api/v1``) on both databases, with alerts written to a real Redis.

Alerts reach the workbench the way the stream worker writes them
(``RedisStore.commit(BatchResult(...))``) and are brought into cases by the real case
builder; every request goes through the real app (``TestClient``), authenticated with real
API tokens. Each test runs once on SQLite and once on PostgreSQL (``database_url``).

The ``wb`` fixture (``conftest.py``) and the :class:`~tests.workbench.bench.Bench` helper are
shared with the other workbench tests.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from stream.events.labels import decode as decode_label
from tests.workbench.bench import MINUTE, T0, Bench
from workbench import audit, ratings
from workbench.models import (
    LEVELS, AlertRecord, AuditRow, Case, Cursor, Note, OutboxMessage, Rating
)


# -- listing ----------------------------------------------------------------------------------

SORT_KEYS = {  # sort -> (Case column, descending)
    "risk": ("risk_score", True), "score": ("max_score", True), "age": ("opened_at", False),
    "recent": ("last_alert_ms", True),
}


def _queue_fixture(wb: Bench) -> list[str]:
    """Eight accounts with different (and some equal) scores, alert counts and times."""
    plan = [("acct-a", [0.91]), ("acct-b", [0.62, 0.7]), ("acct-c", [0.99]), ("acct-d", [0.62, 0.7]),
            ("acct-e", [0.75, 0.8, 0.85]), ("acct-f", [0.55]), ("acct-g", [0.91]), ("acct-h", [0.6, 0.97])]
    alerts = []
    for i, (acct, scores) in enumerate(plan):
        for j, sc in enumerate(scores):
            reason = "new_device" if acct in ("acct-c", "acct-g") else "out_balance_ratio"
            alerts.append(wb.alert(acct, score=sc, ts=T0 + (j * 10 + (i * 7) % 5) * MINUTE, reason=reason))
    wb.commit(alerts)
    stats = wb.build()
    assert (stats.added, stats.cases_opened) == (len(alerts), len(plan))
    return [acct for acct, _ in plan]


def _pages(c: TestClient, headers: dict, limit: int, **params: Any) -> list[list[dict]]:
    pages, after = [], ""
    for _ in range(50):
        r = c.get("/api/v1/cases", params={**params, "limit": limit, **({"after": after} if after else {})},
                  headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body["cases"])
        if body["next"] is None:
            return pages
        after = body["next"]
    raise AssertionError("the cursor never ended")


def test_list_cases_sorts_and_pages_by_keyset(wb):
    _queue_fixture(wb)
    c = wb.client()
    with wb.db.sessions() as s:
        rows = s.execute(select(Case)).unique().scalars().all()
        values = {r.id: {k: getattr(r, k) for k, _ in SORT_KEYS.values()} for r in rows}
    assert len(values) == 8
    for sort, (key, desc) in SORT_KEYS.items():
        whole = c.get("/api/v1/cases", params={"sort": sort}, headers=wb.api("vera")).json()
        assert whole["next"] is None
        expected = [x["id"] for x in whole["cases"]]
        assert sorted(expected) == sorted(values), sort
        keys = [values[i][key] for i in expected]
        assert keys == sorted(keys, reverse=desc), f"not sorted by {key}: {sort}"
        # ties (there are some) come in one fixed order of the ids
        for k in set(keys):
            tied = [i for i in expected if values[i][key] == k]
            assert tied in (sorted(tied), sorted(tied, reverse=True)), (sort, tied)
        for limit in (3, 1):
            pages = _pages(c, wb.api("vera"), limit, sort=sort)
            ids = [x["id"] for p in pages for x in p]
            assert all(0 < len(p) <= limit for p in pages), (sort, limit)
            assert len(ids) == len(set(ids)), f"pages overlap ({sort}, limit {limit})"
            assert ids == expected, (sort, limit)
        # the second page follows the first with no overlap
        first = c.get("/api/v1/cases", params={"sort": sort, "limit": 4}, headers=wb.api("vera")).json()
        second = c.get("/api/v1/cases", params={"sort": sort, "limit": 4, "after": first["next"]},
                       headers=wb.api("vera")).json()
        one, two = {x["id"] for x in first["cases"]}, {x["id"] for x in second["cases"]}
        assert len(one) == len(two) == 4 and not one & two and one | two == set(values)
        assert second["next"] is None


def test_list_cases_filters(wb):
    accounts = _queue_fixture(wb)
    c = wb.client()
    h = wb.api("vera")

    def ids(**params) -> set[int]:
        r = c.get("/api/v1/cases", params=params, headers=h)
        assert r.status_code == 200, r.text
        return {x["id"] for x in r.json()["cases"]}

    case = {a: wb.case_of(a) for a in accounts}
    assert ids() == set(case.values())
    assert ids(account="acct-e") == {case["acct-e"]}
    assert ids(account="nobody") == set()
    assert ids(reason="new_device") == {case["acct-c"], case["acct-g"]}
    assert ids(reason="out_balance_ratio") == set(case.values()) - {case["acct-c"], case["acct-g"]}

    # rita claims one case: it leaves "assignee=none" and shows under her name
    r = c.post(f"/api/v1/cases/{case['acct-b']}/claim", headers=wb.api("rita"))
    assert r.status_code == 200 and r.json()["assignee"] == "rita"
    assert ids(assignee="none") == set(case.values()) - {case["acct-b"]}
    assert ids(assignee="rita") == {case["acct-b"]}
    assert ids(status="in_review") == {case["acct-b"]}
    assert ids(status="open") == set(case.values()) - {case["acct-b"]}

    # a closed case is not active, but is listed by status=closed and status=all
    r = c.post(f"/api/v1/cases/{case['acct-b']}/dispose", json={"decision": "false_positive", "note": "known payee"},
               headers=wb.api("rita"))
    assert r.status_code == 200 and r.json()["status"] == "closed", r.text
    assert case["acct-b"] not in ids()
    assert ids(status="closed") == {case["acct-b"]}
    assert ids(status="all") == set(case.values())
    levels = {x["risk_level"] for x in c.get("/api/v1/cases", headers=h).json()["cases"]}
    for level in levels:
        listed = c.get("/api/v1/cases", params={"level": level}, headers=h).json()["cases"]
        assert listed and all(x["risk_level"] == level for x in listed)

    # values the queue does not know are refused with the reason
    for params in ({"sort": "nonsense"}, {"status": "nonsense"}, {"after": "!!not-a-cursor!!"}):
        r = c.get("/api/v1/cases", params=params, headers=h)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["detail"]
    assert c.get("/api/v1/cases", params={"limit": 0}, headers=h).status_code == 422


def test_get_case_has_reasons_in_words_and_unknown_is_404(wb):
    wb.write_alerts(3, ["acct-1"])
    wb.build()
    cid = wb.case_of("acct-1")
    c = wb.client()
    r = c.get(f"/api/v1/cases/{cid}", headers=wb.api("vera"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["case"]["id"] == cid and body["case"]["account_id"] == "acct-1"
    assert body["case"]["alerts"] == body["case"]["open_alerts"] == 3
    assert len(body["alerts"]) == 3
    for a in body["alerts"]:
        assert [x["feature"] for x in a["reasons"]] == ["out_balance_ratio", "new_device"]
        for reason in a["reasons"]:
            assert isinstance(reason["sentence"], str) and len(reason["sentence"]) > 10, reason
            assert "=" not in reason["sentence"], f"the generic fallback, not words: {reason['sentence']!r}"
    assert body["rating"]["account_id"] == "acct-1"
    assert wb.audit_actions(AuditRow.action == "view", AuditRow.object_id == str(cid)) == ["view"]

    for missing in (cid + 1000, 0):
        r = c.get(f"/api/v1/cases/{missing}", headers=wb.api("vera"))
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("application/json")
        assert set(r.json()) == {"detail"} and str(missing) in r.json()["detail"]
    r = c.get("/api/v1/cases/not-a-number", headers=wb.api("vera"))
    assert r.status_code == 422 and "detail" in r.json()


# -- the whole flow ----------------------------------------------------------------------------

def test_full_flow_claim_dispose_four_eyes_approve_labels(wb):
    alerts = wb.write_alerts(3, ["acct-x"])
    other = wb.write_alerts(1, ["acct-y"])
    wb.build()
    cid, other_cid = wb.case_of("acct-x"), wb.case_of("acct-y")
    c = wb.client()

    # abe (an approver, who may also review) claims and works the case
    r = c.post(f"/api/v1/cases/{cid}/claim", headers=wb.api("abe"))
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["assignee"]) == ("in_review", "abe")
    assert r.json()["lock_expires_at"]

    first = alerts[0].event_id
    r = c.post(f"/api/v1/cases/{cid}/dispose", headers=wb.api("abe"),
               json={"event_id": first, "decision": "false_positive", "note": "the customer's own wallet"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["open_alerts"]) == ("in_review", 2)

    r = c.post(f"/api/v1/cases/{cid}/dispose", headers=wb.api("abe"),
               json={"decision": "confirmed", "note": "account takeover: new device, emptied"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["decision"], r.json()["open_alerts"]) == ("pending_approval", "confirmed", 0)

    # a reviewer's token is below the approver role
    r = c.post(f"/api/v1/cases/{cid}/approve", headers=wb.api("rita"), json={"note": "ok"})
    assert r.status_code == 403 and "approver" in r.json()["detail"]
    # four-eyes: the approver who decided cannot approve, and the refusal is audited
    refused_before = wb.count(AuditRow, AuditRow.action == "refused")
    r = c.post(f"/api/v1/cases/{cid}/approve", headers=wb.api("abe"), json={"note": "self-approval"})
    assert r.status_code == 403, r.text
    assert "four-eyes" in r.json()["detail"]
    assert wb.count(AuditRow, AuditRow.action == "refused") == refused_before + 1
    with wb.db.sessions() as s:
        row = s.execute(select(AuditRow).where(AuditRow.action == "refused").order_by(AuditRow.id.desc())).scalar()
        assert row.actor == "abe" and row.object_id == f"/api/v1/cases/{cid}/approve"
        assert row.after["status"] == 403
    assert wb.snapshot(cid)["case"]["status"] == "pending_approval"

    r = c.post(f"/api/v1/cases/{cid}/approve", headers=wb.api("amy"), json={"note": "agree, file a SAR"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "closed" and r.json()["closed_at"]

    full = c.get(f"/api/v1/cases/{cid}", headers=wb.api("vera")).json()
    assert (full["decided_by"], full["approved_by"]) == ("abe", "amy")
    assert {a["event_id"]: (a["decision"], a["decided_by"]) for a in full["alerts"]} == {
        first: ("false_positive", "abe"), alerts[1].event_id: ("confirmed", "abe"),
        alerts[2].event_id: ("confirmed", "abe")}
    assert [(d["kind"], d["event_id"], d["decision"], d["by"]) for d in full["decisions"]] == [
        ("disposition", first, "false_positive", "abe"), ("disposition", None, "confirmed", "abe"),
        ("approval", None, "confirmed", "amy")]

    # the account's rating took every signal in: three alerts, a false positive, two confirmations
    r = c.get("/api/v1/ratings/acct-x", headers=wb.api("vera"))
    assert r.status_code == 200, r.text
    rating = r.json()
    with wb.db.sessions() as s:
        stored = s.get(Rating, "acct-x")
        assert rating["level"] == ratings.level(stored) and rating["confirmed"] == stored.confirmed == 2
    assert rating["level"] in LEVELS and rating["level"] == "critical"
    assert rating["history"] and rating["history"][0]["level"] == rating["level"]
    unknown = c.get("/api/v1/ratings/nobody", headers=wb.api("vera")).json()
    assert (unknown["level"], unknown["score"], unknown["history"]) == ("low", 0.0, [])

    # one label per disposed alert on the reviews topic's outbox, decodable, label 1 for confirmed
    with wb.db.sessions() as s:
        out = s.execute(select(OutboxMessage).where(OutboxMessage.sink == "kafka")).scalars().all()
    assert {m.target for m in out} == {"exchange.reviews"}
    assert sorted(m.key for m in out) == sorted(a.event_id for a in alerts)
    labels = {m.key: decode_label(m.payload) for m in out}
    for eid, rec in labels.items():
        assert rec["event_id"] == eid and rec["account_id"] == "acct-x" and rec["case_id"] == cid
        assert rec["reviewer"] == "abe"
    assert labels[first]["label"] == 0 and labels[first]["disposition"] == "false_positive"
    assert labels[first]["note"] == "the customer's own wallet"
    for a in alerts[1:]:
        assert (labels[a.event_id]["label"], labels[a.event_id]["disposition"]) == (1, "confirmed")

    # the other account's case was not touched; the audit chain holds
    assert wb.snapshot(other_cid)["case"]["status"] == "open"
    assert other[0].event_id not in labels
    with wb.db.sessions() as s:
        assert audit.verify(s).ok
    assert {"claim", "dispose_alert", "dispose_case", "refused", "approve"} <= set(wb.audit_actions())


def test_rejected_decision_is_decided_and_labelled_again(wb):
    alerts = wb.write_alerts(3, ["acct-j"])
    wb.build()
    cid = wb.case_of("acct-j")
    c = wb.client()
    rita = wb.api("rita")
    assert c.post(f"/api/v1/cases/{cid}/claim", headers=rita).status_code == 200
    own = alerts[0].event_id   # decided on its own: the rejection leaves it alone
    assert c.post(f"/api/v1/cases/{cid}/dispose", headers=rita,
                  json={"event_id": own, "decision": "confirmed", "note": "this one for sure"}).status_code == 200
    r = c.post(f"/api/v1/cases/{cid}/dispose", headers=rita, json={"decision": "escalated", "note": "unsure"})
    assert r.json()["status"] == "pending_approval", r.text
    r = c.post(f"/api/v1/cases/{cid}/reject", headers=rita, json={"note": "mine"})
    assert r.status_code == 403   # a reviewer's token
    r = c.post(f"/api/v1/cases/{cid}/reject", headers=wb.api("amy"), json={"note": "decide it: it is a takeover"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["decision"], r.json()["open_alerts"]) == ("in_review", None, 2)
    r = c.post(f"/api/v1/cases/{cid}/dispose", headers=rita, json={"decision": "confirmed", "note": "takeover"})
    assert r.json()["status"] == "pending_approval", r.text
    assert c.post(f"/api/v1/cases/{cid}/approve", headers=wb.api("amy"), json={"note": "yes"}).status_code == 200

    full = c.get(f"/api/v1/cases/{cid}", headers=wb.api("vera")).json()
    assert full["case"]["decision"] == "confirmed"
    assert {a["event_id"]: a["decision"] for a in full["alerts"]} == {a.event_id: "confirmed" for a in alerts}
    assert [d["kind"] for d in full["decisions"]] == ["disposition", "disposition", "rejection", "disposition",
                                                      "approval"]
    # the labels: the alert decided on its own at once; a case disposition that waits for approval
    # takes effect only when approved, so the rejected escalation published nothing, and the
    # approved confirmation one label per alert it covered
    with wb.db.sessions() as s:
        out = s.execute(select(OutboxMessage).where(OutboxMessage.sink == "kafka").order_by(OutboxMessage.id)
                        ).scalars().all()
    seq = [(m.key, decode_label(m.payload)["label"]) for m in out]
    later = [a.event_id for a in alerts[1:]]
    assert seq[0] == (own, 1)
    assert sorted(seq[1:]) == [(e, 1) for e in later]


def test_false_positive_closes_without_approval_and_notes(wb):
    wb.write_alerts(2, ["acct-fp"])
    wb.build()
    cid = wb.case_of("acct-fp")
    c = wb.client()
    assert c.post(f"/api/v1/cases/{cid}/notes", headers=wb.api("rita"), json={"note": "looking"}).status_code == 200
    assert c.post(f"/api/v1/cases/{cid}/claim", headers=wb.api("rita")).status_code == 200
    r = c.post(f"/api/v1/cases/{cid}/dispose", headers=wb.api("rita"),
               json={"decision": "false_positive", "note": "payroll"})
    assert r.status_code == 200 and r.json()["status"] == "closed", r.text
    with wb.db.sessions() as s:
        out = s.execute(select(OutboxMessage).where(OutboxMessage.sink == "kafka")).scalars().all()
    assert len(out) == 2 and {decode_label(m.payload)["label"] for m in out} == {0}
    assert wb.count(Note, Note.case_id == cid) == 1


# -- refusals ----------------------------------------------------------------------------------

def test_bad_input_and_conflicts_change_nothing(wb):
    alerts = wb.write_alerts(2, ["acct-q"])
    wb.write_alerts(1, ["acct-r"])
    wb.build()
    cid, closed_cid = wb.case_of("acct-q"), wb.case_of("acct-r")
    c = wb.client()
    rita, rick = wb.api("rita"), wb.api("rick")

    def refused(status: int, method: str, path: str, word: str | None = None, *, case: int = cid, **kw):
        before = wb.snapshot(case)
        r = c.request(method, path, **kw)
        assert r.status_code == status, (path, kw, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail, r.text
        if word:
            assert word in detail, detail
        assert wb.snapshot(case) == before, f"{method} {path} {kw} changed the case"
        return detail

    # close acct-r's case (false positive closes it at once)
    assert c.post(f"/api/v1/cases/{closed_cid}/claim", headers=rick).status_code == 200
    assert c.post(f"/api/v1/cases/{closed_cid}/dispose", headers=rick,
                  json={"decision": "false_positive", "note": "fine"}).json()["status"] == "closed"

    dispose = f"/api/v1/cases/{cid}/dispose"
    # not claimed yet
    refused(409, "POST", dispose, "claim case", headers=rita, json={"decision": "confirmed", "note": "x"})
    refused(409, "POST", dispose, "claim case", headers=rita,
            json={"event_id": alerts[0].event_id, "decision": "confirmed", "note": "x"})

    assert c.post(f"/api/v1/cases/{cid}/claim", headers=rita).status_code == 200
    # bodies that are not what the API takes
    refused(422, "POST", dispose, headers={**rita, "content-type": "application/json"}, content=b'{"decision": ')
    refused(422, "POST", dispose, headers={**rita, "content-type": "application/json"}, content=b"[1, 2]")
    refused(422, "POST", dispose, headers=rita)
    refused(422, "POST", dispose, "colour", headers=rita,
            json={"decision": "confirmed", "note": "x", "colour": "red"})
    refused(422, "POST", dispose, "note", headers=rita, json={"decision": "confirmed", "note": ""})
    refused(422, "POST", dispose, "note", headers=rita, json={"decision": "confirmed"})
    refused(422, "POST", dispose, "decision", headers=rita, json={"decision": "maybe", "note": "x"})
    refused(422, "POST", dispose, "note", headers=rita, json={"decision": "confirmed", "note": "x" * 10_001})
    refused(400, "POST", dispose, "note", headers=rita, json={"decision": "confirmed", "note": "   "})
    refused(404, "POST", dispose, "no-such", headers=rita,
            json={"event_id": "no-such", "decision": "confirmed", "note": "x"})
    refused(422, "POST", f"/api/v1/cases/{cid}/approve", headers=wb.api("amy"), json={"note": "x", "extra": 1})
    refused(422, "POST", "/api/v1/ratings/acct-q", headers=rita, json={"level": "extreme", "reason": "x"})
    refused(422, "POST", "/api/v1/ratings/acct-q", headers=rita, json={"level": "high", "reason": "x", "days": 0})
    # another reviewer cannot take or work a claimed case
    refused(409, "POST", f"/api/v1/cases/{cid}/claim", "claimed by rita", headers=rick)
    refused(409, "POST", dispose, "claim case", headers=rick, json={"decision": "confirmed", "note": "x"})
    refused(403, "POST", f"/api/v1/cases/{cid}/release", headers=rick)
    # approving or rejecting what waits for nobody
    refused(409, "POST", f"/api/v1/cases/{cid}/approve", headers=wb.api("amy"), json={"note": "x"})
    refused(409, "POST", f"/api/v1/cases/{cid}/reject", headers=wb.api("amy"), json={"note": "x"})
    # a closed case takes no more dispositions, claims or approvals
    closed = f"/api/v1/cases/{closed_cid}"
    refused(409, "POST", closed + "/dispose", "closed", case=closed_cid, headers=rick,
            json={"decision": "confirmed", "note": "x"})
    refused(409, "POST", closed + "/claim", "closed", case=closed_cid, headers=rick)
    refused(409, "POST", closed + "/assign", "closed", case=closed_cid, headers=wb.api("amy"),
            json={"username": "rick"})
    refused(409, "POST", closed + "/approve", case=closed_cid, headers=wb.api("amy"), json={"note": "x"})
    refused(404, "POST", "/api/v1/cases/99999/claim", headers=rick, case=cid)
    # assigning to someone who is not a reviewer, or nobody
    wb.user("vera")
    refused(400, "POST", f"/api/v1/cases/{cid}/assign", "viewer", headers=wb.api("amy"), json={"username": "vera"})
    refused(404, "POST", f"/api/v1/cases/{cid}/assign", headers=wb.api("amy"), json={"username": "ghost"})

    # refusals of a signed-in caller's action are audited (validation errors never reached an action)
    refusals = wb.count(AuditRow, AuditRow.action == "refused")
    assert refusals == 16, refusals
    # and after all that, the case is still rita's to decide
    r = c.post(dispose, headers=rita, json={"decision": "escalated", "note": "for the MLRO"})
    assert r.status_code == 200 and r.json()["status"] == "pending_approval", r.text


def test_stale_lock_is_refused(make_bench):
    wb = make_bench(case_lock_ttl_s=0.001)
    alerts = wb.write_alerts(2, ["acct-s"])
    wb.build()
    cid = wb.case_of("acct-s")
    c = wb.client()
    assert c.post(f"/api/v1/cases/{cid}/claim", headers=wb.api("rita")).status_code == 200
    time.sleep(0.05)
    before = wb.snapshot(cid)
    for body in ({"decision": "confirmed", "note": "late"},
                 {"event_id": alerts[0].event_id, "decision": "confirmed", "note": "late"}):
        r = c.post(f"/api/v1/cases/{cid}/dispose", headers=wb.api("rita"), json=body)
        assert r.status_code == 409, r.text
        assert "expired" in r.json()["detail"]
        assert wb.snapshot(cid) == before
    # an expired lock no longer keeps others out
    r = c.post(f"/api/v1/cases/{cid}/claim", headers=wb.api("rick"))
    assert r.status_code == 200 and r.json()["assignee"] == "rick", r.text


def test_concurrent_claims_have_one_winner(wb):
    """Reviewers who press "claim" at the same moment: one gets the case, the others 409, nobody a 500."""
    wb.write_alerts(2, ["acct-race"])
    wb.build()
    cid = wb.case_of("acct-race")
    names = ["rita", "rick", "abe", "amy", "ada"]
    heads = {n: wb.api(n) for n in names}
    clients = {n: wb.client() for n in names}
    for _ in range(3):
        start = threading.Barrier(len(names))
        results: dict[str, Any] = {}

        def claim(name: str) -> None:
            start.wait()
            try:
                r = clients[name].post(f"/api/v1/cases/{cid}/claim", headers=heads[name])
                results[name] = (r.status_code, r.json())
            except Exception as exc:  # noqa: BLE001 - a server error, reported below
                results[name] = (500, repr(exc))

        threads = [threading.Thread(target=claim, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        statuses = sorted(s for s, _ in results.values())
        assert statuses == [200] + [409] * (len(names) - 1), results
        winner = next(n for n, (s, _) in results.items() if s == 200)
        assert wb.snapshot(cid)["case"]["assignee"] == winner
        assert clients["ada"].post(f"/api/v1/cases/{cid}/release", headers=heads["ada"]).status_code == 200
    with wb.db.sessions() as s:
        assert audit.verify(s).ok
    assert wb.audit_actions(AuditRow.action == "claim").count("claim") == 3


def test_an_alert_arriving_while_its_case_is_closed_is_not_lost(wb, monkeypatch):
    """The case builder adds an alert to an account's open case while a reviewer closes that
    case: either the alert is in the case before it is closed (and decided with it), or it
    opens a new case; never an undecided alert in a closed case."""
    import workbench.builder as builder_module

    wb.write_alerts(2, ["acct-late"])
    wb.build()
    cid = wb.case_of("acct-late")
    reviewer = wb.client()
    assert reviewer.post(f"/api/v1/cases/{cid}/claim", headers=wb.api("rita")).status_code == 200
    headers = wb.api("rita")
    done: dict[str, Any] = {}

    def close_case() -> None:
        r = reviewer.post(f"/api/v1/cases/{cid}/dispose", headers=headers,
                          json={"decision": "false_positive", "note": "all fine"})
        done["status"] = r.status_code

    original = builder_module._open_case
    closer = threading.Thread(target=close_case)

    def open_case_then_race(session, account_id):
        case = original(session, account_id)
        if not closer.is_alive() and "status" not in done:
            closer.start()
            closer.join(timeout=0.5)  # it finishes now only if nothing keeps the case from changing under us
        return case

    monkeypatch.setattr(builder_module, "_open_case", open_case_then_race)
    wb.write_alerts(1, ["acct-late"])
    wb.build()
    closer.join(timeout=60)
    assert done.get("status") == 200
    with wb.db.sessions() as s:
        for case in s.execute(select(Case).where(Case.account_id == "acct-late")).unique().scalars():
            rows = s.execute(select(AlertRecord).where(AlertRecord.case_id == case.id)).scalars().all()
            undecided = [a.event_id for a in rows if a.decision is None]
            assert (case.alert_count, case.open_alerts) == (len(rows), len(undecided)), case.id
            if case.status == "closed":
                assert undecided == [], f"closed case {case.id} holds undecided alerts {undecided}"
        assert s.execute(select(func.count()).select_from(AlertRecord)
                         .where(AlertRecord.account_id == "acct-late")).scalar() == 3


# -- the case builder ------------------------------------------------------------------------

def test_case_builder_is_idempotent(wb):
    batch = [wb.alert("acct-1"), wb.alert("acct-1"), wb.alert("acct-1")]
    assert len(wb.commit(batch)) == 3
    first = wb.build()
    assert (first.added, first.seen, first.cases_opened, first.missing) == (3, 3, 1, 0)
    counts = (wb.count(Case), wb.count(AlertRecord))
    assert counts == (1, 3)
    snap = wb.snapshot(wb.case_of("acct-1"))

    again = wb.build()
    assert (again.added, again.seen, again.cases_opened) == (0, 0, 0)
    assert (wb.count(Case), wb.count(AlertRecord)) == counts

    # a replay: the same alerts in a later batch; Redis skips the ids it holds, nothing is new
    assert wb.commit(batch) == []
    assert wb.build().added == 0
    # the very same batch again (a retry after a lost reply) changes nothing either
    wb.offsets["ev:0"] -= len(batch)
    assert wb.commit(batch) == []
    # the same event through another partition's stream is not added twice
    assert len(wb.commit([wb.alert("acct-1", event_id=batch[0].event_id, pkey="ev:1")], pkey="ev:1")) == 1
    dup = wb.build()
    assert (dup.seen, dup.added, dup.cases_opened) == (1, 0, 0)
    # and reading every stream from the start again (cursors lost) brings in nothing new
    with wb.db.transaction() as s:
        for row in s.execute(select(Cursor)).scalars().all():
            s.delete(row)
    reread = wb.build()
    assert (reread.seen, reread.added, reread.cases_opened) == (4, 0, 0)
    assert (wb.count(Case), wb.count(AlertRecord)) == counts
    assert wb.snapshot(wb.case_of("acct-1")) == snap
    # the alerts it brought in no longer expire in Redis
    assert wb.redis.ttl(wb.store.key("ev:0", f"alert:{batch[0].event_id}")) == -1

    # a second account gets a case of its own; a new alert of the first joins its open case
    wb.commit([wb.alert("acct-2"), wb.alert("acct-1")])
    more = wb.build()
    assert (more.added, more.cases_opened) == (2, 1)
    assert wb.count(Case) == 2 and wb.case_of("acct-2") != wb.case_of("acct-1")
    assert wb.snapshot(wb.case_of("acct-1"))["case"]["alerts"] == 4


def test_new_alert_after_close_opens_a_new_case(wb):
    wb.write_alerts(2, ["acct-1"])
    wb.build()
    cid = wb.case_of("acct-1")
    c = wb.client()
    assert c.post(f"/api/v1/cases/{cid}/claim", headers=wb.api("rita")).status_code == 200
    assert c.post(f"/api/v1/cases/{cid}/dispose", headers=wb.api("rita"),
                  json={"decision": "false_positive", "note": "ok"}).json()["status"] == "closed"

    wb.write_alerts(1, ["acct-1"])
    stats = wb.build()
    assert (stats.added, stats.cases_opened) == (1, 1)
    new = wb.case_of("acct-1")
    assert new != cid
    old, fresh = wb.snapshot(cid), wb.snapshot(new)
    assert (old["case"]["status"], old["case"]["alerts"]) == ("closed", 2)
    assert (fresh["case"]["status"], fresh["case"]["alerts"], fresh["case"]["open_alerts"]) == ("open", 1, 1)
    listed = c.get("/api/v1/cases", params={"account": "acct-1", "status": "all"}, headers=wb.api("vera")).json()
    assert {x["id"]: x["status"] for x in listed["cases"]} == {cid: "closed", new: "open"}


# -- the schema --------------------------------------------------------------------------------

def test_openapi_lists_the_api(wb):
    c = wb.client()
    r = c.get("/api/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert set(paths) == {
        "/api/v1/cases", "/api/v1/cases/{case_id}", "/api/v1/cases/{case_id}/claim",
        "/api/v1/cases/{case_id}/release", "/api/v1/cases/{case_id}/assign", "/api/v1/cases/{case_id}/dispose",
        "/api/v1/cases/{case_id}/approve", "/api/v1/cases/{case_id}/reject", "/api/v1/cases/{case_id}/notes",
        "/api/v1/ratings/{account_id}", "/api/v1/stats"}
    assert set(paths["/api/v1/cases/{case_id}/dispose"]) == {"post"}
    assert set(paths["/api/v1/ratings/{account_id}"]) == {"get", "post"}
    assert c.get("/api/docs").status_code == 200


def test_stats_and_timestamps_are_utc(wb):
    wb.write_alerts(4, ["acct-1", "acct-2"])
    wb.build()
    c = wb.client()
    r = c.get("/api/v1/stats", headers=wb.api("vera"))
    assert r.status_code == 200, r.text
    body = c.get("/api/v1/cases", headers=wb.api("vera")).json()["cases"]
    for x in body:
        for k in ("opened_at", "updated_at", "last_alert_at"):
            assert datetime.fromisoformat(x[k]).utcoffset().total_seconds() == 0, (k, x[k])
