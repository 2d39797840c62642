"""``txwatch bench models`` on the small models: every section present and consistent (no timings asserted)."""

from __future__ import annotations

import json

from training.stress import FAMILIES
from txwatch.cli import main


def test_bench_models_reports_quality_speed_and_stress(models, events_file, capsys):
    rc = main(["-q", "bench", "models", "--events", str(events_file), "--model", str(models["student"]),
               "--calls", "300"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    s, t = out["student"], out["teacher"]
    assert 0.0 < s["auprc"] <= 1.0 and 0.0 < t["auprc"] <= 1.0
    assert out["ratios"]["auprc_student_over_teacher"] == s["auprc"] / t["auprc"]
    assert s["single_vs_batch_max_abs_diff"] < 1e-9
    assert s["single_event_us"]["calls"] == 300
    assert out["feature_engine"]["events"] == len(events_file.read_text().splitlines())
    stress = out["stress"]
    assert set(stress["families"]) == set(FAMILIES)
    for row in stress["families"].values():
        assert row["instances"] > 0 and row["events"] > 0
        assert 0.0 <= row["student"]["recall"] <= 1.0
    assert stress["max_student_shortfall"] == max(
        r["teacher"]["recall"] - r["student"]["recall"] for r in stress["families"].values())
