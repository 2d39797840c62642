"""Alerts: the one definition of an alert and of its encodings.

An alert is written in two shapes, both defined here and nowhere else:

* the **message** (:func:`alert_message`): the JSON object on the Kafka alerts topic
  (key: the event id), with numbers as numbers, the reasons as a list and the event as an
  object;
* the **hash** (:func:`alert_hash`): the Redis hash of one alert, every field a string
  (reasons and event as JSON text), in the order of ``HASH_FIELDS``; its JSON is also the
  payload of the live pub/sub channel. The Redis commit script's field list is generated
  from ``HASH_FIELDS`` (:mod:`stream.adapters.redis_store`), and readers decode a stored hash
  with :func:`decode_alert_hash`.

>>> a = Alert("e1", "acct", 1767571200000, 0.9, 0.5, "student-x", [("new_device", 1.25)],
...           {"event_id": "e1"}, "events:0")
>>> alert_message(a)["reasons"]
[{'feature': 'new_device', 'contribution': 1.25}]
>>> h = alert_hash(a, now_ms=1)
>>> tuple(h) == HASH_FIELDS, h["status"], decode_alert_hash(h)["reasons"] == alert_message(a)["reasons"]
(True, 'open', True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

HASH_FIELDS = ("event_id", "account_id", "ts", "score", "threshold", "model_version", "reasons", "event",
               "status", "created_ms", "features")
_JSON_FIELDS = ("reasons", "event", "features")


@dataclass(slots=True)
class Alert:
    """An event that scored at or above the model's threshold."""

    event_id: str
    account_id: str
    ts: int
    score: float
    threshold: float
    model_version: str
    reasons: list[tuple[str, float]]   # (feature, contribution), largest first
    event: dict[str, Any]
    partition_key: str
    # The event's feature row as scored (name -> value): what the reasons are read against,
    # for reviewers' explanations in words and case exports.
    features: dict[str, float] = field(default_factory=dict)


def _reasons(a: Alert) -> list[dict[str, Any]]:
    return [{"feature": n, "contribution": c} for n, c in a.reasons]


def alert_message(a: Alert) -> dict[str, Any]:
    """The alert as the JSON object of the Kafka alerts topic."""
    return {"event_id": a.event_id, "account_id": a.account_id, "ts": a.ts, "score": a.score,
            "threshold": a.threshold, "model_version": a.model_version, "reasons": _reasons(a), "event": a.event,
            "features": a.features}


def alert_hash(a: Alert, now_ms: int) -> dict[str, str]:
    """The alert's Redis hash fields (all strings, in ``HASH_FIELDS`` order); a new alert is ``open``."""
    return {"event_id": a.event_id, "account_id": a.account_id, "ts": str(a.ts), "score": repr(a.score),
            "threshold": repr(a.threshold), "model_version": a.model_version,
            "reasons": orjson.dumps(_reasons(a)).decode(), "event": orjson.dumps(a.event).decode(),
            "status": "open", "created_ms": str(now_ms), "features": orjson.dumps(a.features).decode()}


def decode_alert_hash(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A stored alert hash (bytes or str keys and values) with reasons and event decoded."""
    out = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in raw.items()}
    for name in _JSON_FIELDS:
        if name in out:
            out[name] = orjson.loads(out[name])
    return out
