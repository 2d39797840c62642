"""``txwatch retrain``: history plus reviewers' labels -> teacher, student, evaluation, challenger."""

from __future__ import annotations

import pytest

from lifecycle import registry, shadow
from stream.events.labels import label_record, write_labels
from stream.scoring.artifact import read_artifact
from tests.lifecycle.test_promote import cli, client, env, prefix, redis_server, root, served  # noqa: F401
from txwatch.local.embedded import free_port

pytestmark = pytest.mark.integration

SMALL = ("--trees", "60", "--leaves", "15", "--learning-rate", "0.1", "--early-stopping", "20", "--leaf-budget", "0.2")


def test_retrain_installs_a_challenger_never_the_champion(small_events, events_file, env, client, prefix, served,
                                                          tmp_path, capsys):  # noqa: F811
    # Reviewers called 40 of the history's attacks false positives and 10 normal events confirmed.
    once = list({e["event_id"]: e for e in small_events}.values())     # the history delivers some twice
    attacks = [e for e in once if e["label"] == 1][:40]
    normal = [e for e in once if e["label"] == 0][:10]
    labels = tmp_path / "labels.jsonl"
    write_labels(labels, [label_record(e["event_id"], "false_positive", account_id=e["account_id"], reviewer="kim",
                                       decided_at=1) for e in attacks]
                 + [label_record(e["event_id"], "confirmed", account_id=e["account_id"], reviewer="kim",
                                 decided_at=1) for e in normal])
    code, out, err = cli(capsys, "retrain", "--events", str(events_file), "--labels", str(labels),
                         "--out", str(tmp_path / "r1"), "--why", "december labels", *SMALL)
    assert code == 0, err
    counts = out["reviewer_labels"]
    assert counts["records"] == 50 and 45 <= counts["matched"] == counts["changed"], counts
    # The manifests carry the counts; the evaluation ran.
    tm, _ = read_artifact(out["teacher"]["dir"])
    assert tm["training_data"]["reviewer_labels"] == counts
    ev = out["evaluation"]
    base = ev["positives"] / ev["events"]               # a small teacher: well above chance is what it shows
    assert ev["student"]["auprc"] > 3 * base and ev["teacher"]["auprc"] > 3 * base, ev
    assert (tmp_path / "r1" / "evaluation").is_dir()
    # Installed as challenger, the served model untouched.
    ch = shadow.current(client, prefix)
    assert ch["dir"] == out["student"]["dir"] and ch["why"] == "december labels" and ch["who"] == "ana"
    assert ch == out["challenger"]
    assert registry.pointer(client, prefix) is None and registry.history(client, prefix, None) == []


def test_retrain_checks_redis_before_training(events_file, served, monkeypatch, tmp_path, capsys):  # noqa: F811
    monkeypatch.setenv("TXWATCH_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("TXWATCH_MODEL_DIR", str(served))
    labels = tmp_path / "labels.jsonl"
    write_labels(labels, [])
    code, out, err = cli(capsys, "retrain", "--events", str(events_file), "--labels", str(labels),
                         "--out", str(tmp_path / "r"), *SMALL)
    assert (code, out) == (2, None) and err.startswith("txwatch: error: cannot reach Redis")
    assert not (tmp_path / "r").exists()                 # nothing trained
