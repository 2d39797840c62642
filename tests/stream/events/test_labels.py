"""Reviewer label records: the one format, its round trip, and every refusal with its reason."""

from __future__ import annotations

import orjson
import pytest

from stream.errors import TxwatchError
from stream.events.labels import (DISPOSITIONS, FIELDS, LabelError, decode, encode, label_record, message_key,
                                  read_labels, write_labels)

T0 = 1767571200000


def rec(event_id="e1", disposition="confirmed", decided_at=T0, **kw):
    kw.setdefault("account_id", "acct-1")
    kw.setdefault("reviewer", "kim")
    return label_record(event_id, disposition, decided_at=decided_at, **kw)


@pytest.mark.parametrize("disposition,label", sorted(DISPOSITIONS.items()))
def test_round_trip_of_every_disposition(disposition, label):
    r = rec(disposition=disposition, case_id=42, note="looks like structuring ✓")
    assert r["label"] == label and r["schema"] == 1 and tuple(r) == FIELDS
    raw = encode(r)
    assert isinstance(raw, bytes) and decode(raw) == r and decode(raw.decode()) == r
    assert message_key(r) == b"e1"


def test_case_id_may_be_null_and_note_empty():
    r = rec(case_id=None, note="")
    assert decode(encode(r)) == r


def test_fields_beyond_the_format_are_left_out():
    extra = dict(rec(), ui="workbench")
    assert decode(orjson.dumps(extra)) == rec()


def test_label_error_has_the_one_root():
    assert issubclass(LabelError, TxwatchError)


def _bad(**changes):
    r = dict(rec())
    for k, v in changes.items():
        if v is KeyError:
            del r[k]
        else:
            r[k] = v
    return orjson.dumps(r)


@pytest.mark.parametrize("raw,reason", [
    (b"not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'"text"', "expected a JSON object"),
    *[(_bad(**{name: KeyError}), f"missing field {name!r}") for name in FIELDS],
    (_bad(event_id=""), "event_id: must be a non-empty string"),
    (_bad(event_id=7), "event_id: must be a non-empty string"),
    (_bad(reviewer=None), "reviewer: must be a non-empty string"),
    (_bad(account_id=1), "account_id: must be a string"),
    (_bad(note=None), "note: must be a string"),
    (_bad(decided_at="2026-01-05"), "decided_at: must be epoch milliseconds"),
    (_bad(decided_at=1.5), "decided_at: must be epoch milliseconds"),
    (_bad(decided_at=-1), "decided_at: must be epoch milliseconds"),
    (_bad(decided_at=True), "decided_at: must be epoch milliseconds"),
    (_bad(case_id="c-1"), "case_id: must be an integer or null"),
    (_bad(case_id=False), "case_id: must be an integer or null"),
    (_bad(disposition="fraud"), "disposition: unknown 'fraud'"),
    (_bad(disposition=None), "disposition: unknown None"),
    (_bad(label="1"), "label: must be 0, 1 or null"),
    (_bad(label=True), "label: must be 0, 1 or null"),
    (_bad(label=0), "label: 0 contradicts disposition 'confirmed'"),
    (_bad(label=None), "label: null contradicts disposition 'confirmed'"),
    (_bad(label=2), "label: 2 contradicts disposition 'confirmed'"),
    (_bad(disposition="escalated"), "label: 1 contradicts disposition 'escalated'"),
    (_bad(disposition="false_positive"), "label: 1 contradicts disposition 'false_positive'"),
    (_bad(schema=2), "schema: unsupported version 2"),
    (_bad(schema="1"), "schema: unsupported version '1'"),
])
def test_every_bad_input_is_refused_with_its_reason(raw, reason):
    with pytest.raises(LabelError) as exc:
        decode(raw)
    assert reason in str(exc.value)


def test_decode_refuses_a_non_text_value():
    with pytest.raises(LabelError, match="expected bytes or str"):
        decode(42)


def test_building_or_encoding_a_bad_record_is_refused():
    with pytest.raises(LabelError, match="disposition: unknown 'maybe'"):
        rec(disposition="maybe")
    with pytest.raises(LabelError, match="decided_at"):
        rec(decided_at=None)
    with pytest.raises(LabelError, match="label: 0 contradicts"):
        encode(dict(rec(), label=0))


def test_latest_decision_wins_by_time_then_file_order(tmp_path):
    path = tmp_path / "labels.jsonl"
    n = write_labels(path, [
        rec("a", "confirmed", T0 + 10),
        rec("a", "false_positive", T0 + 5),    # older, though later in the file: loses
        rec("b", "false_positive", T0),
        rec("b", "confirmed", T0 + 1),         # newer: wins
        rec("c", "confirmed", T0),
        rec("c", "false_positive", T0),        # same time, later line: wins
    ])
    assert n == 6
    assert read_labels(path) == {"a": 1, "b": 1, "c": 0}


def test_escalations_are_not_training_labels(tmp_path):
    path = tmp_path / "labels.jsonl"
    write_labels(path, [
        rec("only-escalated", "escalated"),
        rec("confirmed-then-escalated", "confirmed", T0),
        rec("confirmed-then-escalated", "escalated", T0 + 1),   # recorded, leaves the decision standing
        rec("cleared", "false_positive"),
    ])
    assert read_labels(path) == {"confirmed-then-escalated": 1, "cleared": 0}


def test_blank_lines_and_an_empty_file_decide_nothing(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b"\n" + encode(rec("x", "false_positive")) + b"\n\n  \n")
    assert read_labels(path) == {"x": 0}
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert read_labels(empty) == {}


def test_a_bad_line_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_bytes(encode(rec()) + b"\n\n" + _bad(disposition="fraud") + b"\n")
    with pytest.raises(LabelError) as exc:
        read_labels(path)
    assert str(exc.value).startswith(f"{path}: line 3: disposition: unknown 'fraud'")


def test_a_missing_file_or_a_directory_is_a_label_error(tmp_path):
    with pytest.raises(LabelError, match="no such file"):
        read_labels(tmp_path / "missing.jsonl")
    with pytest.raises(LabelError, match="not a regular file"):
        read_labels(tmp_path)


def test_write_is_atomic_a_bad_record_leaves_the_old_file(tmp_path):
    path = tmp_path / "labels.jsonl"
    write_labels(path, [rec("a")])
    before = path.read_bytes()
    with pytest.raises(LabelError, match="record 2: disposition"):
        write_labels(path, [rec("b"), dict(rec("c"), disposition="nope")])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.jsonl"]   # no temporary file left behind
