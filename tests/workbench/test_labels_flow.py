"""The reviewers' label path end to end: alerts into cases, dispositions, label records
through the outbox to a real Kafka-protocol broker (Tansu), ``txwatch labels export`` from
the topic and from the database, and the labels relabelling a training dataset."""

from __future__ import annotations

import uuid
from collections import defaultdict

import numpy as np
import orjson
import pytest
from sqlalchemy import select

from stream.events.files import write_events
from stream.events.labels import LabelError, read_labels
from training.dataset import event_dataset
from training.simulate import simulate
from txwatch.local.embedded import EmbeddedKafka
from workbench import auth, cases, outbox
from workbench.builder import BuildStats, add_alert
from workbench.models import AlertRecord, Case, Decision, OutboxMessage

pytestmark = [pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")]


@pytest.fixture(scope="module")
def kafka():
    with EmbeddedKafka() as k:
        yield k


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A tiny simulated history, written as an events file: (path, events)."""
    events = simulate(n_events=3000, n_accounts=60, days=6, seed=5)
    path = tmp_path_factory.mktemp("labels-flow") / "events.jsonl"
    write_events(path, events)
    return path, events


def alert_hash(event: dict, score: float, created_ms: int) -> dict:
    """An alert as ``stream.events.alerts.decode_alert_hash`` gives it (numbers still strings)."""
    return {"event_id": event["event_id"], "account_id": event["account_id"], "ts": str(event["ts"]),
            "score": repr(score), "threshold": "0.5", "model_version": "student-test",
            "reasons": [{"feature": "amount_z", "contribution": 1.5}, {"feature": "new_device", "contribution": 0.4}],
            "event": event, "status": "open", "created_ms": str(created_ms), "features": {"amount_z": 3.2}}


def _pick(events: list[dict]):
    """Account A with both fraud (label 1) and normal events, account B with two normal ones."""
    by_account: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        by_account[e["account_id"]].append(e)
    a = next(acc for acc, evs in sorted(by_account.items())
             if sum(e["label"] == 1 for e in evs) >= 1 and sum(e["label"] == 0 for e in evs) >= 2)
    b = next(acc for acc, evs in sorted(by_account.items()) if acc != a and sum(e["label"] == 0 for e in evs) >= 2)
    a_normal = [e for e in by_account[a] if e["label"] == 0]
    a_fraud = [e for e in by_account[a] if e["label"] == 1]
    b_normal = [e for e in by_account[b] if e["label"] == 0]
    return a_normal[0], a_fraud[0], a_normal[1], b_normal[0], b_normal[1]


def _export(monkeypatch, capsys, out, *args: str) -> tuple[int, str]:
    from txwatch.cli import main

    rc = main(["labels", "export", "--out", str(out), *args])
    return rc, capsys.readouterr().err


def _records(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _key(r: dict) -> bytes:
    return orjson.dumps(r, option=orjson.OPT_SORT_KEYS)


def test_label_path_end_to_end(db, database_url, kafka, history, fast_passwords, monkeypatch, capsys, tmp_path):
    from stream.adapters.kafka import ensure_topics
    from stream.settings import load_settings
    from workbench.commands import _kafka_sender

    events_file, events = history
    e_confirm, e_fp_fraud, e_escalate, e_fp1, e_fp2 = _pick(events)
    topic = f"reviews-{uuid.uuid4().hex[:8]}"
    policy = cases.Policy(reviews_topic=topic)

    # -- alerts into cases, as the case builder brings them in
    stats = BuildStats()
    with db.transaction() as s:
        for i, (e, score) in enumerate([(e_confirm, 0.91), (e_fp_fraud, 0.97), (e_escalate, 0.66),
                                        (e_fp1, 0.71), (e_fp2, 0.55)]):
            assert add_alert(s, alert_hash(e, score, 1767571200000 + i), "t:0", stats)
        assert not add_alert(s, alert_hash(e_fp1, 0.71, 0), "t:0", stats)  # the same alert again: not added
        reviewer = auth.create_user(s, "kim", "a-long-password", "reviewer")
        approver = auth.create_user(s, "lee", "another-long-password", "approver")
    assert (stats.cases_opened, ) == (2, )
    with db.sessions() as s:
        case_a = s.execute(select(Case).where(Case.account_id == e_confirm["account_id"])).unique().scalar_one()
        case_b = s.execute(select(Case).where(Case.account_id == e_fp1["account_id"])).unique().scalar_one()
        assert (case_a.alert_count, case_a.open_alerts, case_a.max_score) == (3, 3, 0.97)
        assert (case_b.alert_count, case_b.open_alerts) == (2, 2)
        assert case_a.top_reason == "amount_z"
        assert s.get(AlertRecord, e_fp_fraud["event_id"]).scenario == e_fp_fraud["scenario"]
    kim, lee = cases.Actor(reviewer, "10.0.0.1"), cases.Actor(approver, "10.0.0.2")

    # -- dispositions
    with db.transaction() as s:
        cases.claim(s, case_a.id, kim, policy)
        cases.dispose_alert(s, case_a.id, e_confirm["event_id"], "confirmed", "matches the mule pattern", kim, policy)
        cases.dispose_alert(s, case_a.id, e_fp_fraud["event_id"], "false_positive", "customer verified", kim, policy)
        cases.dispose_case(s, case_a.id, "escalated", "needs a second look", kim, policy)
    with db.transaction() as s:
        cases.claim(s, case_b.id, kim, policy)
        cases.dispose_case(s, case_b.id, "false_positive", "known payroll", kim, policy)
    with db.transaction() as s:
        with pytest.raises(cases.Forbidden):
            cases.approve(s, case_a.id, "ok", kim, policy)  # four eyes
    with db.transaction() as s:
        cases.approve(s, case_a.id, "agreed", lee, policy)
    with db.sessions() as s:
        statuses = dict(s.execute(select(Case.id, Case.status)).all())
        assert statuses == {case_a.id: "closed", case_b.id: "closed"}
        decided = dict(s.execute(select(AlertRecord.event_id, AlertRecord.decision)).all())
        assert decided == {e_confirm["event_id"]: "confirmed", e_fp_fraud["event_id"]: "false_positive",
                           e_escalate["event_id"]: "escalated", e_fp1["event_id"]: "false_positive",
                           e_fp2["event_id"]: "false_positive"}
        assert s.query(Decision).filter(Decision.kind == "approval").count() == 1
        labels_rows = s.execute(select(OutboxMessage).where(OutboxMessage.sink == "kafka")).scalars().all()
        assert sorted(r.key for r in labels_rows) == sorted(decided)
        assert {r.target for r in labels_rows} == {topic}

    # -- publish through the outbox to the broker
    settings = load_settings(kafka_url=kafka.url, reviews_topic=topic, partitions=2)
    ensure_topics(settings.model_copy(update={"input_topics": topic}))
    send, close = _kafka_sender(settings)
    try:
        assert outbox.Publisher(db, send).run_once() == (5, 0)
    finally:
        close()

    # -- export from the topic
    monkeypatch.setenv("TXWATCH_DATABASE_URL", database_url)
    monkeypatch.setenv("TXWATCH_KAFKA_URL", kafka.url)
    monkeypatch.setenv("TXWATCH_REVIEWS_TOPIC", topic)
    from_kafka = tmp_path / "labels-kafka.jsonl"
    rc, err = _export(monkeypatch, capsys, from_kafka)
    assert rc == 0, err
    assert f"wrote 5 label records from {topic}" in err
    records = _records(from_kafka)
    assert len(records) == 5
    by_event = {r["event_id"]: r for r in records}
    assert {eid: (r["disposition"], r["label"]) for eid, r in by_event.items()} == {
        e_confirm["event_id"]: ("confirmed", 1), e_fp_fraud["event_id"]: ("false_positive", 0),
        e_escalate["event_id"]: ("escalated", None), e_fp1["event_id"]: ("false_positive", 0),
        e_fp2["event_id"]: ("false_positive", 0)}
    assert all(r["reviewer"] == "kim" and r["schema"] == 1 for r in records)
    assert by_event[e_confirm["event_id"]]["case_id"] == case_a.id
    assert by_event[e_fp1["event_id"]]["case_id"] == case_b.id
    assert by_event[e_confirm["event_id"]]["note"] == "matches the mule pattern"
    assert by_event[e_escalate["event_id"]]["note"] == "needs a second look"
    assert by_event[e_confirm["event_id"]]["account_id"] == e_confirm["account_id"]

    # -- export from the database, without Kafka: the same records
    monkeypatch.delenv("TXWATCH_KAFKA_URL")
    from_db = tmp_path / "labels-db.jsonl"
    rc, err = _export(monkeypatch, capsys, from_db, "--source", "kafka")
    assert rc == 2 and "txwatch: error: --source kafka needs TXWATCH_KAFKA_URL" in err and not from_db.exists()
    rc, err = _export(monkeypatch, capsys, from_db, "--source", "db")
    assert rc == 0, err
    assert "wrote 5 label records from the workbench database" in err
    assert sorted(map(_key, _records(from_db))) == sorted(map(_key, records))
    rc, err = _export(monkeypatch, capsys, tmp_path / "labels-default.jsonl")  # no Kafka: the database by default
    assert rc == 0 and "the workbench database" in err

    # -- the training labels: confirmed 1, false positive 0, escalated left out
    labels = read_labels(from_kafka)
    assert labels == {e_confirm["event_id"]: 1, e_fp_fraud["event_id"]: 0, e_fp1["event_id"]: 0,
                      e_fp2["event_id"]: 0}
    assert read_labels(from_db) == labels

    # -- and they relabel the events they decide
    base = event_dataset(events_file)
    ds = event_dataset(events_file, labels=from_kafka)
    assert ds.meta["dropped"] == {"duplicates": 0, "late": 0}   # rows follow the file, one per event
    assert ds.meta["reviewer_labels"] == {"file": str(from_kafka.resolve()), "records": 4, "matched": 4, "changed": 2}
    row = {e["event_id"]: i for i, e in enumerate(events)}
    assert len(ds.y) == len(events)
    for eid, label in labels.items():
        assert ds.y[row[eid]] == label
    assert base.y[row[e_confirm["event_id"]]] == 0 and base.y[row[e_fp_fraud["event_id"]]] == 1
    changed = np.flatnonzero(base.y != ds.y).tolist()
    assert changed == sorted([row[e_confirm["event_id"]], row[e_fp_fraud["event_id"]]])
    assert ds.y[row[e_escalate["event_id"]]] == base.y[row[e_escalate["event_id"]]]
    np.testing.assert_array_equal(base.X, ds.X)


def test_a_labels_file_that_is_not_label_records_is_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event_id": "e1", "label": 1, "disposition": "false_positive", "account_id": "a", '
                   '"case_id": 1, "reviewer": "kim", "decided_at": 1, "note": "", "schema": 1}\n')
    with pytest.raises(LabelError, match="line 1: label: 1 contradicts disposition 'false_positive'"):
        read_labels(bad)
