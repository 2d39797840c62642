"""The dashboard's model health: the served model's drift and live fidelity, and the shadow challenger
with its precision on the dispositions of record, from the same Redis keys the CLI reads."""

from __future__ import annotations

import time

import numpy as np

from lifecycle import fidelity, shadow
from stream.adapters.model_watcher import pointer_key
from stream.core.drift import DriftCounter
from stream.core.shadow import ShadowWindow
from stream.scoring.artifact import read_artifact, write_artifact
from stream.scoring.profile import load_profile
from stream.scoring.student import load_student
from tests.workbench.bench import Bench


def _challenger(models, out):
    manifest, files = read_artifact(models["student"])
    manifest = {k: v for k, v in manifest.items() if k not in ("files", "format")}
    manifest["model_version"] = "challenger-b"
    write_artifact(out, files, manifest)
    return out


def test_the_dashboard_shows_drift_fidelity_and_the_challenger_with_its_precision(wb: Bench, models, dataset,
                                                                                 tmp_path):
    student = load_student(models["student"])
    wb.redis.set(pointer_key(wb.prefix), str(models["student"]))
    # A drift window of the served model (its first 5,000 rows: the earliest days, when accounts
    # have no history yet, which drift from the training period as a whole).
    counter = DriftCounter(load_profile(models["student"]), student.version, 3600)
    X = dataset.X[:5000]
    counter.add(X, student.score(X), 40)
    wb.store.record_drift(counter.take())
    # A live fidelity window, as txwatch fidelity stores it.
    fidelity.store_window(wb.redis, wb.prefix, {"model_version": student.version, "window_start_s": 0, "rows": 800,
                                                 "judged": True, "alarms": [], "live": {
                                                     "spearman": 0.951, "top_k_overlap": 0.75, "mean_abs_diff": 0.0012}})
    # Reviewers call both of the champion's alerts false positives.
    alerts = wb.write_alerts(2, ["acct-h1", "acct-h2"])
    wb.build()
    c = wb.client()
    for alert in alerts:
        cid = wb.case_of(alert.account_id)
        assert c.post(f"/api/v1/cases/{cid}/claim", headers=wb.api("rita")).status_code == 200
        r = c.post(f"/api/v1/cases/{cid}/dispose", headers=wb.api("rita"),
                   json={"event_id": alert.event_id, "decision": "false_positive", "note": "normal payout"})
        assert r.status_code == 200, r.text
    # The challenger: the champion alerted on both, it would have alerted on the first only.
    ch = shadow.set_challenger(wb.redis, wb.prefix, str(models["student"]), _challenger(models, tmp_path / "b"),
                               who="lead", why="retrained")
    wb.store.record_shadow(ShadowWindow("challenger-b", student.version, int(time.time()), rows=5000,
                                        champion_alerts=50, challenger_alerts=40, both=30,
                                        pairs=np.column_stack((np.arange(100.0), np.arange(100.0))),
                                        would_be=[(alerts[0].event_id, 0.9, 0.8, "both"),
                                                  (alerts[1].event_id, 0.9, 0.1, "champion")]))

    page = wb.browser("rita")
    h = page.get("/dashboard/health").json()
    assert h["served"]["version"] == student.version and h["notes"] == []
    assert h["drift"]["rows"] == 5000 and h["drift"]["verdict"] == "drift" and h["drift"]["alarms"]
    assert h["fidelity"]["live"]["spearman"] == 0.951
    s = h["challenger"]["shadow"]
    assert h["challenger"]["version"] == ch["version"] == "challenger-b"
    assert (s["rows"], s["champion_alerts"], s["challenger_alerts"], s["both"]) == (5000, 50, 40, 30)
    assert s["alert_overlap"] == 30 / 60 and abs(s["spearman"] - 1.0) < 1e-9
    # Precision on the dispositions of record: both false positives; the challenger raised one of them.
    assert s["precision"]["champion"] == {"labelled_alerts": 2, "confirmed": 0, "precision": 0.0}
    assert s["precision"]["challenger"] == {"labelled_alerts": 1, "confirmed": 0, "precision": 0.0}
    assert s["gate_failures"] == ["shadow rows: 5,000 scored in shadow, at least 10,000 needed"]
    html = page.get("/").text
    assert 'id="model-health"' in html and "challenger-b" in html and "Spearman 0.951" in html
    assert "not yet:" in html and '<b class="bad">drift</b>' in html


def test_model_health_says_what_it_cannot_read(wb: Bench):
    h = wb.browser("rita").get("/dashboard/health").json()
    assert h["served"] is None and h["notes"] and "does not verify" in h["notes"][0]
