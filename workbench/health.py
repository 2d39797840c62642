"""Model health for the dashboard: the served model's drift and live fidelity, and the shadow challenger.

The same figures as ``txwatch drift``, ``txwatch fidelity`` and ``txwatch models status``,
read from the same Redis keys (:mod:`lifecycle`); the challenger's precision is measured on
the dispositions of record in this database (the labels the outbox publishes). Anything
that cannot be read (Redis away, a model without a profile) is reported as a note in
words; the rest shows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

DRIFT_MINUTES = 60.0
SHADOW_MINUTES = 24 * 60.0


def labels_of_record(session: Session, reviews_topic: str) -> list[dict[str, Any]]:
    """Every label record the workbench has published (or will: the outbox), oldest first."""
    from stream.events.labels import decode
    from workbench.models import OutboxMessage

    rows = session.execute(select(OutboxMessage.payload).where(OutboxMessage.sink == "kafka",
                                                               OutboxMessage.target == reviews_topic)
                           .order_by(OutboxMessage.id)).scalars().all()
    return [decode(p) for p in rows]


def label_map(records: list[dict[str, Any]]) -> dict[str, int]:
    """event_id -> the latest training label (escalations, label null, left out).

    >>> label_map([{"event_id": "a", "label": 1}, {"event_id": "a", "label": 0}, {"event_id": "b", "label": None}])
    {'a': 0}
    """
    out: dict[str, int] = {}
    for r in records:
        if r["label"] is None:
            out.pop(r["event_id"], None)
        else:
            out[r["event_id"]] = int(r["label"])
    return out


def model_health(store, prefix: str, served_dir: str, session: Session, reviews_topic: str) -> dict[str, Any]:
    """The dashboard's model-health figures (see the module docstring)."""
    from lifecycle import fidelity, shadow
    from lifecycle.drift import Alarms, drift_report
    from stream.errors import ArtifactError
    from stream.scoring.artifact import read_artifact
    from stream.scoring.profile import load_profile

    out: dict[str, Any] = {"notes": [], "served": None, "drift": None, "fidelity": None, "challenger": None}
    if store is None:
        out["notes"].append("no Redis configured: drift, fidelity and the challenger are not known here")
        return out
    try:
        version = read_artifact(served_dir)[0].get("model_version")
    except ArtifactError as exc:
        out["notes"].append(f"the served model does not verify: {exc}")
        return out
    out["served"] = {"dir": served_dir, "version": version}
    client = store.client
    try:
        try:
            profile = load_profile(served_dir)
        except ArtifactError as exc:
            out["notes"].append(f"drift is not counted for {version}: {exc}")
        else:
            rep = drift_report(store, profile, version, DRIFT_MINUTES, Alarms())
            out["drift"] = {k: rep[k] for k in ("rows", "verdict", "alarms", "score_psi", "alert_rate",
                                                "alert_rate_reference", "minutes")}
            out["drift"]["top_features"] = rep["top_features"][:3]
        out["fidelity"] = (fidelity.latest(client, prefix, version) or [None])[0]
        ch = shadow.current(client, prefix)
        if ch is not None:
            labels = label_map(labels_of_record(session, reviews_topic))
            fig = shadow.figures(store, ch["version"], minutes=SHADOW_MINUTES, labels=labels)
            fig["gate_failures"] = shadow.gate(fig)[1]
            ch["shadow"] = fig
            ch["fidelity"] = (fidelity.latest(client, prefix, ch["version"]) or [None])[0]
            out["challenger"] = ch
    except Exception as exc:  # noqa: BLE001 - Redis away: say so, the page still renders
        out["notes"].append(f"Redis could not be read ({exc.__class__.__name__}): model health is unknown")
    return out
