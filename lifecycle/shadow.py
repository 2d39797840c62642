"""The shadow challenger: which model runs beside the served one, and how the two compare.

``txwatch models challenger DIR`` verifies a student (sha256 of every file, a reference
profile, the served model's feature schema) and names it in Redis
(:func:`stream.adapters.model_watcher.challenger_key`); every worker then scores each event
with it too, after the event's own batch is stored, and keeps what it would have done under
its own keys (:mod:`stream.core.shadow`; the keys are in :mod:`stream.adapters.redis_store`).
Reviewers never see it.

:func:`figures` sums what the workers stored: rows both models scored, each one's alert
rate, how many alerts both raise (overlap: both / either), the Spearman rank correlation of
their scores on the stored reservoir samples, and, with reviewers' labels (``--labels``, a
labels file: :mod:`stream.events.labels`), each model's precision on the champion's alerts
reviewers disposed (the challenger's own extra alerts were never reviewed, so its precision
is on the disposed alerts it would also have raised).

:func:`gate` holds the figures to the promotion bounds in :class:`ShadowBounds`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis

from stream.adapters.model_watcher import challenger_dir, challenger_key
from stream.errors import ArtifactError, ServiceUnavailable, TxwatchError
from stream.scoring.artifact import utc_now


@dataclass(frozen=True)
class ShadowBounds:
    """What a challenger's shadow run must show before it is promoted."""

    min_rows: int = 10_000          # rows scored in shadow, at least
    rate_ratio: float = 2.0         # its alert rate within [1/ratio, ratio] x the champion's
    min_labelled: int = 30          # disposed alerts needed before precision is judged
    precision_slack: float = 0.05   # its precision on disposed alerts >= the champion's - slack


def _unavailable(exc: Exception, what: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"cannot reach Redis ({exc.__class__.__name__}: {exc}); {what}")


def current(client: redis.Redis, prefix: str) -> dict[str, Any] | None:
    """The challenger record (dir, version, who, at, why), or None."""
    try:
        raw = client.get(challenger_key(prefix))
    except redis.RedisError as exc:
        raise _unavailable(exc, "the challenger is unknown") from None
    return orjson.loads(raw) if challenger_dir(raw) else None


def set_challenger(client: redis.Redis, prefix: str, served_dir: str, directory: str | os.PathLike, *,
                   who: str, why: str) -> dict[str, Any]:
    """Verify ``directory`` and make it the challenger every worker shadows; return its record.

    Refused (``TxwatchError``, nothing changed) when it does not verify, has no reference
    profile, has other features than the served model, or is the served model.
    """
    from stream.scoring.profile import load_profile
    from training.evaluate import load_any_student

    directory = os.path.abspath(directory)
    if os.path.realpath(directory) == os.path.realpath(served_dir):
        raise TxwatchError(f"{directory} is the served model; a challenger must be another model")
    try:
        student = load_any_student(directory)
        load_profile(directory)
    except ArtifactError as exc:
        raise TxwatchError(f"challenger refused: {exc}; nothing was changed") from None
    try:
        served = load_any_student(served_dir)
    except ArtifactError as exc:
        raise TxwatchError(f"the served model {served_dir} does not verify ({exc}); a challenger cannot be "
                           "compared with it") from None
    if not served.same_features(student):
        raise TxwatchError(f"challenger refused: its features ({len(student.feature_names)}, schema "
                           f"{str(student.manifest.get('feature_schema_hash'))[:12]}) are not the served model's "
                           f"({len(served.feature_names)}, schema {str(served.manifest.get('feature_schema_hash'))[:12]})"
                           "; nothing was changed")
    record = {"dir": directory, "version": student.version, "who": who, "at": utc_now(), "why": why,
              "served": {"dir": served_dir, "version": served.version}}
    try:
        client.set(challenger_key(prefix), orjson.dumps(record))
    except redis.RedisError as exc:
        raise _unavailable(exc, "the challenger was not set") from None
    return record


def clear_challenger(client: redis.Redis, prefix: str) -> dict[str, Any] | None:
    """Stop shadowing; the record that was removed (None: there was no challenger)."""
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.get(challenger_key(prefix))
            pipe.delete(challenger_key(prefix))
            raw, _ = pipe.execute()
    except redis.RedisError as exc:
        raise _unavailable(exc, "the challenger was not cleared") from None
    return orjson.loads(raw) if challenger_dir(raw) else None


def _spearman(pairs: np.ndarray) -> float | None:
    if len(pairs) < 3 or np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(pairs[:, 0], pairs[:, 1]).statistic)


def figures(store, version: str, *, minutes: float = 24 * 60, labels: dict[str, int] | None = None,
            now: float | None = None) -> dict[str, Any]:
    """The challenger ``version``'s shadow figures over the last ``minutes`` (module docstring)."""
    now = time.time() if now is None else now
    windows = store.shadow_since(version, int(now - minutes * 60))
    tot = {k: sum(int(w.get(k, 0)) for _, w in windows)
           for k in ("rows", "champion_alerts", "challenger_alerts", "both", "dropped")}
    champions = sorted({w.get("champion") for _, w in windows if w.get("champion")})
    rows = tot["rows"]
    either = tot["champion_alerts"] + tot["challenger_alerts"] - tot["both"]
    pairs = store.shadow_pairs(version)
    out: dict[str, Any] = {
        "challenger_version": version, "champion_versions": champions, "minutes": minutes, "windows": len(windows),
        **tot,
        "champion_alert_rate": tot["champion_alerts"] / rows if rows else None,
        "challenger_alert_rate": tot["challenger_alerts"] / rows if rows else None,
        "alert_overlap": tot["both"] / either if either else None,
        "spearman": _spearman(pairs), "pairs": len(pairs),
    }
    if labels is not None:
        out["precision"] = _precision(store.shadow_alerts(version), labels)
    return out


def _precision(would_be: list[dict[str, Any]], labels: dict[str, int]) -> dict[str, Any]:
    """Each model's precision on the alerts reviewers disposed (labels 0/1)."""
    seen: dict[str, str] = {}
    for a in would_be:
        seen[a["event_id"]] = a["which"]
    out = {}
    for side, raised in (("champion", ("champion", "both")), ("challenger", ("challenger", "both"))):
        judged = [labels[e] for e, which in seen.items() if which in raised and e in labels]
        out[side] = {"labelled_alerts": len(judged), "confirmed": int(sum(judged)),
                     "precision": (sum(judged) / len(judged)) if judged else None}
    return out


def gate(fig: dict[str, Any], bounds: ShadowBounds = ShadowBounds()) -> tuple[dict[str, Any], list[str]]:
    """The bounds applied to a challenger's shadow figures and the failures (empty: it passes).

    >>> fig = {"rows": 50_000, "champion_alert_rate": 0.01, "challenger_alert_rate": 0.03,
    ...        "precision": {"champion": {"labelled_alerts": 40, "precision": 0.5},
    ...                      "challenger": {"labelled_alerts": 35, "precision": 0.6}}}
    >>> gate(fig)[1]
    ["shadow alert rate: the challenger alerts on 3.0000% of events, 3.00x the champion's 1.0000% (bound: within 2.0x)"]
    """
    failures: list[str] = []
    applied: dict[str, Any] = {"min_rows": bounds.min_rows, "rate_ratio": bounds.rate_ratio,
                               "min_labelled": bounds.min_labelled, "precision_slack": bounds.precision_slack}
    if fig["rows"] < bounds.min_rows:
        failures.append(f"shadow rows: {fig['rows']:,} scored in shadow, at least {bounds.min_rows:,} needed")
        return applied, failures
    a, b = fig["champion_alert_rate"], fig["challenger_alert_rate"]
    if a and b is not None:
        ratio = b / a
        if not (1 / bounds.rate_ratio <= ratio <= bounds.rate_ratio):
            failures.append(f"shadow alert rate: the challenger alerts on {b:.4%} of events, {ratio:.2f}x the "
                            f"champion's {a:.4%} (bound: within {bounds.rate_ratio}x)")
    prec = fig.get("precision")
    if prec:
        c, ch = prec["champion"], prec["challenger"]
        if min(c["labelled_alerts"], ch["labelled_alerts"]) >= bounds.min_labelled:
            if ch["precision"] < c["precision"] - bounds.precision_slack:
                failures.append(f"shadow precision: {ch['precision']:.3f} on {ch['labelled_alerts']} disposed alerts, "
                                f"below the champion's {c['precision']:.3f} - {bounds.precision_slack}")
    return applied, failures

