"""``txwatch drift``: the served model's drift report from the workers' windows in Redis.

The workers add per-window histograms of every feature and of the score to Redis
(:mod:`stream.core.drift`); this sums the windows of the last ``minutes`` and compares them
with the model's reference profile: PSI per feature and for the score, the alert rate
against the profile's (validation) rate and the distill target. Past an alarm level the
report says which figure and the command exits with status 1, so a scheduler or a CI job
can page on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.core.drift import PSI_MODERATE, PSI_SIGNIFICANT, report, window_from_fields
from stream.scoring.profile import Profile


@dataclass(frozen=True)
class Alarms:
    """The levels past which the report raises an alarm."""

    feature_psi: float = PSI_SIGNIFICANT
    score_psi: float = PSI_SIGNIFICANT
    alert_rate_ratio: float = 2.0    # live alert rate more than this many times (or under 1/this) the reference
    min_rows: int = 1000             # fewer scored events than this: too few to judge, no alarm


def summed(store, profile: Profile, version: str, since_s: int) -> tuple[int, int, int, np.ndarray, np.ndarray]:
    """``(windows, rows, alerts, feature counts, score counts)`` of a version's windows since ``since_s``."""
    feats = np.zeros((len(profile.feature_names), profile.n_bins), dtype=np.int64)
    score = np.zeros(len(profile.score_edges) + 1, dtype=np.int64)
    rows = alerts = 0
    windows = store.drift_since(version, since_s)
    for _, fields in windows:
        r, a, f, s = window_from_fields(fields, profile)
        rows, alerts = rows + r, alerts + a
        feats += f
        score += s
    return len(windows), rows, alerts, feats, score


# Calendar features: a window shorter than a week sees another mix of hours and weekdays than
# the training period by construction (an hour's window holds one hour), so their PSI is
# reported but raises no alarm.
CALENDAR = ("hour_sin", "hour_cos", "is_weekend")


def judge(rep: dict[str, Any], alarms: Alarms) -> list[str]:
    """The alarms a report raises, in words."""
    if rep["rows"] < alarms.min_rows:
        return []
    out = [f"feature {name}: PSI {f['psi']:.3f} > {alarms.feature_psi}" for name, f in rep["features"].items()
           if f["psi"] > alarms.feature_psi and name not in CALENDAR]
    if rep["score_psi"] > alarms.score_psi:
        out.append(f"score: PSI {rep['score_psi']:.3f} > {alarms.score_psi}")
    ref = rep["alert_rate_reference"]
    if ref and rep["alert_rate"] is not None:
        ratio = rep["alert_rate"] / ref
        if ratio > alarms.alert_rate_ratio or ratio < 1.0 / alarms.alert_rate_ratio:
            out.append(f"alert rate {rep['alert_rate']:.4%} is {ratio:.2f}x the reference {ref:.4%} "
                       f"(alarm past {alarms.alert_rate_ratio}x either way)")
    return out


def drift_report(store, profile: Profile, version: str, minutes: float, alarms: Alarms,
                 now: float | None = None) -> dict[str, Any]:
    """The report of the last ``minutes`` for a model version, with its alarms."""
    now = time.time() if now is None else now
    windows, rows, alerts, feats, score = summed(store, profile, version, int(now - minutes * 60))
    rep = report(profile, rows, alerts, feats, score)
    ranked = sorted(rep["features"].items(), key=lambda kv: -kv[1]["psi"])
    rep.update({"model_version": version, "minutes": minutes, "windows": windows,
                "top_features": [{"feature": n, "psi": f["psi"]} for n, f in ranked[:10]],
                "levels": {"moderate": PSI_MODERATE, "significant": PSI_SIGNIFICANT},
                "alarm_levels": alarms.__dict__})
    rep["alarms"] = judge(rep, alarms)
    rep["verdict"] = "no data" if rows == 0 else ("too few rows" if rows < alarms.min_rows else
                                                  ("drift" if rep["alarms"] else "stable"))
    rep["_counts"] = (feats, score)
    return rep


def write_markdown(rep: dict[str, Any], profile: Profile, out_dir: str | Path) -> Path:
    """report.md with PNG plots (the score's histogram and the most drifted features, reference vs live)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    feats, score = rep["_counts"]

    def bars(path: Path, title: str, ref: np.ndarray, live: np.ndarray) -> None:
        live_share = live / live.sum() if live.sum() else live.astype(float)
        x = np.arange(len(ref))
        fig, ax = plt.subplots(figsize=(6, 2.6))
        ax.bar(x - 0.2, ref, width=0.4, label="reference")
        ax.bar(x + 0.2, live_share, width=0.4, label="live")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("bin")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    bars(out / "score.png", f"score (PSI {rep['score_psi']:.3f})", profile.score_freq, score)
    index = {n: j for j, n in enumerate(profile.feature_names)}
    lines = [f"# Drift report: {rep['model_version']}", "",
             f"Last {rep['minutes']:g} minutes: {rep['windows']} windows, {rep['rows']:,} scored events, "
             f"{rep['alerts']:,} alerts. Verdict: **{rep['verdict']}**.", ""]
    lines += [f"- {a}" for a in rep["alarms"]] or ["No alarm."]
    rate = rep["alert_rate"]
    lines += ["", f"Alert rate {rate:.4%}" if rate is not None else "Alert rate n/a",
              f"(reference {rep['alert_rate_reference']}, target {rep['alert_rate_target']}); "
              f"score PSI {rep['score_psi']:.3f}.", "", "![score](score.png)", "",
              "| feature | PSI |", "|---|---|"]
    for item in rep["top_features"]:
        lines.append(f"| {item['feature']} | {item['psi']:.3f} |")
    for item in rep["top_features"][:4]:
        j = index[item["feature"]]
        k = len(profile.freq[j])
        name = f"feature-{item['feature']}.png"
        bars(out / name, f"{item['feature']} (PSI {item['psi']:.3f})", profile.freq[j], feats[j, :k])
        lines += ["", f"![{item['feature']}]({name})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def served(settings, client) -> tuple[str, Profile, str]:
    """``(directory, profile, version)`` of the model the workers serve (the registry's pointer,
    else ``TXWATCH_MODEL_DIR``); ``ArtifactError`` if it has no usable profile."""
    from lifecycle.registry import current
    from stream.scoring.profile import load_profile
    from stream.scoring.student import load_student

    directory = current(client, settings.redis_prefix, settings.model_dir)
    student = load_student(directory, feature_schema_hash=None)
    return directory, load_profile(directory), student.version


def run(settings, *, model_dir: str | None, minutes: float, alarms: Alarms, report_dir: str | None) -> tuple[dict, int]:
    """The report for ``txwatch drift`` and its exit status (1: an alarm)."""
    from stream.adapters.redis_store import redis_store
    from stream.scoring.profile import load_profile
    from stream.scoring.student import load_student

    store = redis_store(settings)
    if model_dir:
        profile, version = load_profile(model_dir), load_student(model_dir, feature_schema_hash=None).version
    else:
        model_dir, profile, version = served(settings, store.client)
    rep = drift_report(store, profile, version, minutes, alarms)
    if report_dir:
        rep["report"] = str(write_markdown(rep, profile, report_dir))
    rep.pop("_counts")
    rep["model_dir"] = str(model_dir)
    return rep, (1 if rep["alarms"] else 0)
