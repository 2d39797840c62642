"""Reviewer labels: the one definition of a reviewer's decision on an alert and of its encodings.

When a compliance reviewer disposes an alert, the decision becomes a **label record**, a
JSON object written in two places, both defined here and nowhere else:

* a line of a JSON Lines **labels file** (:func:`write_labels`, :func:`read_labels`), which
  ``txwatch train --labels`` and ``txwatch distill --labels`` read;
* the value of a Kafka message on the reviews topic (``TXWATCH_REVIEWS_TOPIC``, default
  ``exchange.reviews``), keyed by the event id (:func:`message_key`, :func:`encode`,
  :func:`decode`).

The fields, all required (``FIELDS``, in this order):

``event_id``     the reviewed event (str, not empty)
``label``        the training label the disposition gives: 1, 0 or null (``DISPOSITIONS``)
``disposition``  ``confirmed`` (label 1), ``false_positive`` (label 0) or ``escalated``
                 (label null: recorded, but not a training label)
``account_id``   the event's account (str)
``case_id``      the reviewer's case (int, or null outside a case)
``reviewer``     who decided (str, not empty)
``decided_at``   when, in epoch milliseconds (int)
``note``         free text (str, may be empty)
``schema``       the record's version, ``1`` (``SCHEMA``)

A record that breaks any of this is refused with a :class:`LabelError` saying why; fields
beyond these are ignored (left out of the decoded record).

>>> r = label_record("e1", "confirmed", account_id="a1", reviewer="kim", decided_at=1767571200000, case_id=7)
>>> raw = encode(r)
>>> raw.split(b",")[:3]
[b'{"event_id":"e1"', b'"label":1', b'"disposition":"confirmed"']
>>> decode(raw) == r, decode(raw.decode()) == r
(True, True)
>>> decode(b'{"event_id": "e1"}')
Traceback (most recent call last):
...
stream.events.labels.LabelError: missing field 'label'
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from stream.atomic import replacing
from stream.errors import TxwatchError

SCHEMA = 1
# disposition -> training label (None: recorded, not trained on)
DISPOSITIONS: dict[str, int | None] = {"confirmed": 1, "false_positive": 0, "escalated": None}
FIELDS = ("event_id", "label", "disposition", "account_id", "case_id", "reviewer", "decided_at", "note", "schema")


class LabelError(TxwatchError):
    """A label record or labels file that cannot be used; the message says why (and where)."""


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is an int subclass, and not a valid number here


def _check(obj: Any) -> dict[str, Any]:
    """``obj`` as a valid label record (known fields only, in ``FIELDS`` order), or ``LabelError``."""
    if type(obj) is not dict:
        raise LabelError(f"expected a JSON object, got {type(obj).__name__}")
    for name in FIELDS:
        if name not in obj:
            raise LabelError(f"missing field {name!r}")
    r = {name: obj[name] for name in FIELDS}
    if r["schema"] != SCHEMA or not _is_int(r["schema"]):
        raise LabelError(f"schema: unsupported version {r['schema']!r} (this txwatch reads {SCHEMA})")
    for name in ("event_id", "reviewer"):
        if type(r[name]) is not str or not r[name]:
            raise LabelError(f"{name}: must be a non-empty string, got {r[name]!r}")
    for name in ("account_id", "note"):
        if type(r[name]) is not str:
            raise LabelError(f"{name}: must be a string, got {type(r[name]).__name__}")
    if not _is_int(r["decided_at"]) or r["decided_at"] < 0:
        raise LabelError(f"decided_at: must be epoch milliseconds (an integer >= 0), got {r['decided_at']!r}")
    if r["case_id"] is not None and not _is_int(r["case_id"]):
        raise LabelError(f"case_id: must be an integer or null, got {r['case_id']!r}")
    disposition = r["disposition"]
    if type(disposition) is not str or disposition not in DISPOSITIONS:
        raise LabelError(f"disposition: unknown {disposition!r} (one of {', '.join(DISPOSITIONS)})")
    if r["label"] is not None and not _is_int(r["label"]):
        raise LabelError(f"label: must be 0, 1 or null, got {r['label']!r}")
    expected = DISPOSITIONS[disposition]
    if r["label"] != expected:
        want = "null" if expected is None else expected
        raise LabelError(f"label: {r['label'] if r['label'] is not None else 'null'} contradicts "
                         f"disposition {disposition!r} (which gives {want})")
    return r


def label_record(event_id: str, disposition: str, *, account_id: str, reviewer: str, decided_at: int,
                 case_id: int | None = None, note: str = "") -> dict[str, Any]:
    """A validated label record; its ``label`` follows from ``disposition`` (``DISPOSITIONS``).

    Raises ``LabelError`` for a field of the wrong type or an unknown disposition.
    """
    return _check({"event_id": event_id, "label": DISPOSITIONS.get(disposition) if isinstance(disposition, str)
                   else None, "disposition": disposition, "account_id": account_id, "case_id": case_id,
                   "reviewer": reviewer, "decided_at": decided_at, "note": note, "schema": SCHEMA})


def encode(record: Mapping[str, Any]) -> bytes:
    """The record as compact JSON bytes (a Kafka message value, or a labels-file line without
    its line break). Validates it first (``LabelError``)."""
    return orjson.dumps(_check(dict(record)))


def decode(raw: bytes | str) -> dict[str, Any]:
    """A label record from JSON (bytes or str), validated; ``LabelError`` with the reason."""
    if not isinstance(raw, (bytes, bytearray, memoryview, str)):
        raise LabelError(f"expected bytes or str, got {type(raw).__name__}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LabelError(f"not valid JSON: {exc}") from None
    return _check(obj)


def message_key(record: Mapping[str, Any]) -> bytes:
    """The Kafka key of the record's message on the reviews topic: its event id."""
    return str(record["event_id"]).encode()


def read_labels(path: str | os.PathLike) -> dict[str, int]:
    """``{event_id: 0|1}``: the training label of every event a labels file decides.

    The file is JSON Lines of label records (blank lines skipped; an empty file decides
    nothing). Escalations (label null) are not training labels and are left out; of the
    other decisions on one event the latest wins: the greatest ``decided_at``, and of equal
    times the later line. An unreadable file or a bad line raises ``LabelError`` naming the
    file and the line.
    """
    p = Path(path)
    if not p.exists():
        raise LabelError(f"{p}: no such file")
    if not p.is_file():
        raise LabelError(f"{p}: not a regular file")
    latest: dict[str, tuple[int, int]] = {}   # event_id -> (decided_at, label); file order breaks ties
    with open(p, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                r = decode(line)
            except LabelError as exc:
                raise LabelError(f"{p}: line {n}: {exc}") from None
            if r["label"] is None:
                continue
            seen = latest.get(r["event_id"])
            if seen is None or r["decided_at"] >= seen[0]:
                latest[r["event_id"]] = (r["decided_at"], r["label"])
    return {event_id: label for event_id, (_, label) in latest.items()}


def write_labels(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Write ``records`` as a labels file (JSON Lines), atomically: the file appears complete
    or not at all; a record that is not valid (``LabelError``) leaves ``path`` as it was.
    Returns the number of records written."""
    n = 0
    with replacing(path) as f:
        for n, record in enumerate(records, 1):
            try:
                f.write(encode(record) + b"\n")
            except LabelError as exc:
                raise LabelError(f"{path}: record {n}: {exc}") from None
    return n
