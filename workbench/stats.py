"""Dashboard figures: alert flow, open work, decision speed, false-positive rate, alert rate.

Each figure is one indexed query; the dashboard asks for them every few seconds.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from workbench.models import AlertRecord, Case


def per_minute(session: Session, minutes: int = 60, now_ms: int | None = None) -> list[int]:
    """Alerts committed by the workers in each of the last ``minutes`` minutes, oldest first
    (counted by the database, one row per minute, from the ``created_ms`` index)."""
    now_ms = now_ms or int(time.time() * 1000)
    start = now_ms - minutes * 60_000
    minute = ((AlertRecord.created_ms - start) // 60_000).label("minute")
    rows = session.execute(select(minute, func.count()).where(AlertRecord.created_ms >= start)
                           .group_by(minute)).all()
    counts = [0] * minutes
    for i, n in rows:
        counts[min(minutes - 1, max(0, int(i)))] += n
    return counts


def dashboard(session: Session, *, alert_rate_target: float | None = None, events_scored: int | None = None,
              since_ms: int | None = None) -> dict[str, Any]:
    """Every dashboard figure, as JSON-ready values."""
    now_ms = int(time.time() * 1000)
    since_ms = since_ms or now_ms - 86_400_000
    open_cases = session.execute(select(func.count()).select_from(Case).where(Case.active == 1)).scalar() or 0
    unworked = session.execute(select(Case.id, Case.account_id, Case.opened_at).where(Case.status == "open")
                               .order_by(Case.opened_at.asc()).limit(1)).first()
    by_reason = session.execute(select(AlertRecord.top_reason, func.count()).where(AlertRecord.created_ms >= since_ms)
                                .group_by(AlertRecord.top_reason).order_by(func.count().desc()).limit(8)).all()
    by_scenario = session.execute(select(AlertRecord.scenario, func.count()).where(AlertRecord.created_ms >= since_ms)
                                  .group_by(AlertRecord.scenario).order_by(func.count().desc()).limit(8)).all()
    closed = session.execute(select(Case.opened_at, Case.closed_at).where(Case.status == "closed")
                             .order_by(Case.closed_at.desc()).limit(1000)).all()
    durations = [(c - o).total_seconds() for o, c in closed if c is not None and o is not None]
    decided = dict(session.execute(select(AlertRecord.decision, func.count()).where(AlertRecord.decision.is_not(None))
                                   .group_by(AlertRecord.decision)).all())
    n_decided = sum(decided.values())
    alerts_total = session.execute(select(func.count()).select_from(AlertRecord)).scalar() or 0
    rate = (alerts_total / events_scored) if events_scored else None
    return {
        "alerts_per_minute": per_minute(session, 60, now_ms),
        "alerts_total": alerts_total,
        "by_reason": [{"reason": r or "none", "alerts": n} for r, n in by_reason],
        "by_scenario": [{"scenario": s or "unlabelled", "alerts": n} for s, n in by_scenario],
        "open_cases": open_cases,
        "oldest_unworked": ({"case_id": unworked[0], "account_id": unworked[1],
                             "age_s": round(time.time() - unworked[2].timestamp())} if unworked else None),
        "median_time_to_decision_s": round(statistics.median(durations), 1) if durations else None,
        "decided_alerts": n_decided,
        "false_positive_rate": round(decided.get("false_positive", 0) / n_decided, 4) if n_decided else None,
        "alert_rate": round(rate, 5) if rate is not None else None,
        "alert_rate_target": alert_rate_target,
        "events_scored": events_scored,
    }
