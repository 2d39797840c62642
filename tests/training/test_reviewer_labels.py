"""Reviewer labels flow back into training: they override the events' own labels by
event_id, once, where the events are loaded, and their counts reach the manifest."""

from __future__ import annotations

import os

import numpy as np
import orjson
import pytest

from stream.errors import DataError
from stream.events.files import read_events, write_events
from stream.events.labels import label_record, write_labels
from training.dataset import build_features, event_dataset, load_dataset
from training.simulate import deliver, simulate
from txwatch.cli import main

T0 = 1767571200000
SIM = {"n_events": 5000, "n_accounts": 100, "days": 10, "seed": 3}


@pytest.fixture(scope="module")
def events_path(tmp_path_factory):
    """A small simulated history in delivery order (late and duplicate deliveries)."""
    path = tmp_path_factory.mktemp("reviews") / "events.jsonl"
    write_events(path, deliver(simulate(**SIM), SIM["seed"]))
    return path


@pytest.fixture(scope="module")
def base(events_path):
    """The dataset without reviewer labels, and the event of each of its rows."""
    events = read_events(events_path)
    kept = [events[i] for i in build_features(events).applied.tolist()]
    ds = event_dataset(events_path)
    assert len(kept) == len(ds.y)
    return ds, kept


def _rec(event, disposition, at=T0):
    return label_record(event.event_id, disposition, account_id=event.account_id, reviewer="kim",
                        decided_at=at, case_id=None, note="")


@pytest.fixture(scope="module")
def reviews(tmp_path_factory, base):
    """A labels file: a label-0 event confirmed, a label-1 event cleared, a label-0 event
    escalated (no training label), a label-0 event cleared (unchanged), an unknown event;
    and the rows they concern."""
    ds, kept = base
    zeros = np.flatnonzero(ds.y == 0)
    ones = np.flatnonzero(ds.y == 1)
    confirmed, cleared, escalated, agreed = int(zeros[10]), int(ones[3]), int(zeros[20]), int(zeros[30])
    path = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    ghost = label_record("not-in-the-data", "confirmed", account_id="x", reviewer="kim", decided_at=T0)
    write_labels(path, [
        _rec(kept[confirmed], "false_positive", T0),
        _rec(kept[confirmed], "confirmed", T0 + 60_000),   # the later decision wins
        _rec(kept[cleared], "false_positive"),
        _rec(kept[escalated], "escalated"),
        _rec(kept[agreed], "false_positive"),
        ghost,
    ])
    rows = {"confirmed": confirmed, "cleared": cleared, "escalated": escalated, "agreed": agreed}
    return path, rows


EXPECTED = {"records": 4, "matched": 3, "changed": 2}   # 4 decided events, 3 in the data, 2 relabelled


def test_relabelled_events_change_their_training_label(base, reviews, events_path):
    ds0, _ = base
    path, rows = reviews
    ds = event_dataset(events_path, labels=path)
    assert ds0.y[rows["confirmed"]] == 0 and ds.y[rows["confirmed"]] == 1
    assert ds0.y[rows["cleared"]] == 1 and ds.y[rows["cleared"]] == 0
    assert ds.y[rows["escalated"]] == 0 and ds.y[rows["agreed"]] == 0
    changed = np.flatnonzero(ds.y != ds0.y).tolist()
    assert changed == sorted([rows["confirmed"], rows["cleared"]])
    assert np.array_equal(ds.X, ds0.X) and np.array_equal(ds.split, ds0.split)   # only labels move
    assert ds.meta["reviewer_labels"] == {"file": os.path.abspath(path), **EXPECTED}
    assert ds.manifest_base()["training_data"]["reviewer_labels"] == ds.meta["reviewer_labels"]
    assert "reviewer_labels" not in ds0.meta and "reviewer_labels" not in ds0.manifest_base()["training_data"]


def test_a_mapping_gives_the_same_labels_through_load_dataset(base, reviews, events_path):
    ds0, kept = base
    _, rows = reviews
    labels = {kept[rows["confirmed"]].event_id: 1, kept[rows["cleared"]].event_id: 0}
    ds = load_dataset(events_path, labels=labels)
    assert ds.y[rows["confirmed"]] == 1 and ds.y[rows["cleared"]] == 0
    assert ds.meta["reviewer_labels"] == {"file": None, "records": 2, "matched": 2, "changed": 2}


def test_tabular_mode_refuses_labels(tmp_path):
    with pytest.raises(DataError, match="--labels needs an events file"):
        load_dataset(tmp_path / "table.csv", label="is_fraud", labels={"e": 1})


def run(capsys, *argv):
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_with_labels_records_them_in_the_teacher_manifest(capsys, tmp_path, events_path, reviews):
    path, _ = reviews
    code, _, err = run(capsys, "train", "--events", events_path, "--labels", path, "--out", tmp_path / "teacher",
                       "--trees", 20, "--early-stopping", 10)
    assert code == 0, err
    assert "reviewer labels: 4 records, 3 matched, 2 changed" in err
    manifest = orjson.loads((tmp_path / "teacher" / "manifest.json").read_bytes())
    assert manifest["training_data"]["reviewer_labels"] == {"file": os.path.abspath(path), **EXPECTED}


def test_a_malformed_labels_file_is_one_error_line(capsys, tmp_path, events_path):
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"event_id": "e1", "label": 1, "disposition": "confirmed"}\n')
    code, out, err = run(capsys, "-q", "train", "--events", events_path, "--labels", bad, "--out", tmp_path / "t")
    assert code == 2 and out == ""
    assert err.splitlines() == [f"txwatch: error: {bad}: line 1: missing field 'account_id'"]
    assert not (tmp_path / "t").exists()


def test_labels_with_a_table_is_one_error_line(capsys, tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("x,y\n1,0\n2,1\n")
    code, _, err = run(capsys, "-q", "train", "--events", table, "--label", "y", "--labels", tmp_path / "l.jsonl",
                       "--out", tmp_path / "t")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("txwatch: error: --labels needs an events file")


def test_distill_with_labels_records_them_in_the_student_manifest(capsys, tmp_path, events_path, reviews):
    path, _ = reviews
    assert run(capsys, "-q", "train", "--events", events_path, "--out", tmp_path / "teacher",
               "--trees", 20, "--early-stopping", 10)[0] == 0
    code, _, err = run(capsys, "distill", "--events", events_path, "--labels", path, "--teacher", tmp_path / "teacher",
                       "--out", tmp_path / "student", "--family", "linear")
    assert code == 0, err
    assert "reviewer labels: 4 records, 3 matched, 2 changed" in err
    manifest = orjson.loads((tmp_path / "student" / "manifest.json").read_bytes())
    assert manifest["training_data"]["reviewer_labels"] == {"file": os.path.abspath(path), **EXPECTED}
