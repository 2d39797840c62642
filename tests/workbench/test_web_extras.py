"""The API reference page, an empty event id, the login limiter's memory, stale sessions."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import select, update

from tests.workbench.bench import Bench
from workbench import auth
from workbench.models import WebSession, utcnow


def test_api_reference_renders_every_operation_without_a_cdn(wb: Bench):
    c = wb.client()
    r = c.get("/api/docs")
    assert r.status_code == 200
    spec = c.get("/api/openapi.json").json()
    for path in spec["paths"]:
        assert f"<code>{path}</code>" in r.text
    assert "DisposeIn" in r.text and "event_id" in r.text        # a body's fields are listed
    assert "cdn" not in r.text.lower() and "<script>" not in r.text  # works offline, under the CSP


def test_an_empty_event_id_is_refused_not_taken_for_the_whole_case(wb: Bench):
    wb.write_alerts(2, ["acct-e"])
    wb.build()
    cid = wb.case_of("acct-e")
    c = wb.client()
    assert c.post(f"/api/v1/cases/{cid}/claim", headers=wb.api("rita")).status_code == 200
    before = wb.snapshot(cid)
    r = c.post(f"/api/v1/cases/{cid}/dispose", headers=wb.api("rita"),
               json={"event_id": "", "decision": "false_positive", "note": "x"})
    assert r.status_code == 422 and "event_id" in r.json()["detail"]
    assert wb.snapshot(cid) == before


def test_login_limiter_forgets_names_whose_failures_aged_out():
    limiter = auth.LoginLimiter(attempts=2, window_s=0.05, max_keys=100)
    for i in range(100):
        limiter.failed(f"guess-{i}", "10.0.0.1")
    time.sleep(0.1)
    limiter.failed("another", "10.0.0.1")          # the table is full: aged-out keys go
    assert len(limiter._failures) == 1
    limiter.failed("another", "10.0.0.1")
    assert limiter.blocked_for("another", "10.0.0.1") > 0
    assert limiter.blocked_for("never-tried", "10.0.0.1") == 0.0 and len(limiter._failures) == 1


def test_a_sign_in_removes_sessions_idle_past_the_ttl(wb: Bench):
    wb.browser("rita")
    with wb.db.transaction() as s:
        s.execute(update(WebSession).values(last_seen=utcnow() - timedelta(seconds=wb.settings.ui_session_ttl_s + 5)))
    assert len(_sessions(wb)) == 1
    wb.browser("vera")
    assert len(_sessions(wb)) == 1  # rita's stale row went; vera's is the one left


def _sessions(wb: Bench) -> list[WebSession]:
    with wb.db.sessions() as s:
        return list(s.execute(select(WebSession)).scalars())


def test_the_dashboard_reads_the_target_of_the_model_the_workers_serve(wb: Bench, models):
    """A promotion moves the Redis pointer; the workbench shows that model's target, not TXWATCH_MODEL_DIR's."""
    from stream.adapters.model_watcher import pointer_key
    from stream.scoring.student import load_student
    from workbench.web.app import model_target, served_dir

    assert served_dir(wb.settings, wb.store) == wb.settings.model_dir       # no pointer: the configured one
    wb.redis.set(pointer_key(wb.prefix), str(models["student"]))
    assert served_dir(wb.settings, wb.store) == str(models["student"])
    target = model_target(served_dir(wb.settings, wb.store))
    assert target["model_version"] == load_student(models["student"]).version and target["alert_rate_target"] == 0.01


def test_alerts_per_minute_are_counted_by_minute_on_either_database(db):
    """The dashboard's per-minute counts come from one grouped query; each alert lands in its minute."""
    from sqlalchemy import insert

    from workbench import stats
    from workbench.models import AlertRecord, Case

    now = 10_000_000_000
    created = [now - 3_600_000 + 1, now - 59_999, now - 1, now - 120_001, now - 7_200_000]  # the last: too old
    with db.engine.begin() as c:
        c.execute(insert(Case), [{"id": 1, "account_id": "a", "status": "open", "opened_at": utcnow(),
                                  "updated_at": utcnow()}])
        c.execute(insert(AlertRecord), [
            {"event_id": f"e{i}", "case_id": 1, "account_id": "a", "ts": 0, "score": 0.9, "threshold": 0.5,
             "model_version": "m", "reasons": [], "event": {}, "features": {}, "partition_key": "p", "created_ms": ms,
             "received_at": utcnow()} for i, ms in enumerate(created)])
    with db.sessions() as s:
        counts = stats.per_minute(s, 60, now)
    assert len(counts) == 60 and sum(counts) == 4
    assert (counts[0], counts[57], counts[59]) == (1, 1, 2)
