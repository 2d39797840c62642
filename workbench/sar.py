"""The SAR package: a case exported as JSON and as Markdown, for a suspicious activity report.

Both carry the account, its alerts with the events and the reasons in words, notes,
decisions, the account's risk rating and the case's audit trail.
"""

from __future__ import annotations

from typing import Any

import orjson

from workbench.models import utcnow


def package(case_file: dict[str, Any], *, exported_by: str) -> dict[str, Any]:
    """The case file with who exported it and when."""
    return {"format": "txwatch-sar/1", "exported_at": utcnow().isoformat(timespec="seconds"),
            "exported_by": exported_by, **case_file}


def to_json(pkg: dict[str, Any]) -> bytes:
    """The package as indented JSON."""
    return orjson.dumps(pkg, option=orjson.OPT_INDENT_2)


def _cell(value: Any) -> str:
    return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")


def to_markdown(pkg: dict[str, Any]) -> str:
    """The package as a Markdown document a compliance officer can read and file."""
    c = pkg["case"]
    r = pkg["rating"]
    out = [f"# Case {c['id']}: account {c['account_id']}", "",
           f"Exported {pkg['exported_at']} by {pkg['exported_by']}.", "",
           "| | |", "|---|---|",
           f"| Status | {_cell(c['status'])} |", f"| Decision | {_cell(c['decision'])} |",
           f"| Decided by | {_cell(pkg.get('decided_by'))} |", f"| Approved by | {_cell(pkg.get('approved_by'))} |",
           f"| Opened | {_cell(c['opened_at'])} |", f"| Closed | {_cell(c['closed_at'])} |",
           f"| Alerts | {c['alerts']} |", f"| Highest score | {c['max_score']} |",
           f"| Account risk | {_cell(r['level'])} (score {r['score']}) |", ""]
    out += ["## Alerts", ""]
    for a in pkg["alerts"]:
        ev = a["event"] or {}
        out += [f"### {a['at']}: {_cell(ev.get('type'))} of {_cell(ev.get('amount'))} {_cell(ev.get('asset'))} "
                f"(${float(ev.get('usd_value') or 0):,.2f})", "",
                f"Event `{a['event_id']}`; score {a['score']:.4f} against threshold {a['threshold']:.4f}; "
                f"model `{a['model_version']}`; disposition: {a['decision'] or 'none'}"
                + (f" by {a['decided_by']}" if a['decided_by'] else "") + ".", "",
                "Why the model flagged it:", ""]
        out += [f"- {x['sentence']}" for x in a["reasons"]] or ["- (no reasons recorded)"]
        out += ["", "Event fields: " + ", ".join(f"{k}={_cell(v)}" for k, v in ev.items() if k not in ("label", "scenario")), ""]
    out += ["## Decisions", ""] + [f"- {d['at']} {d['by']}: {d['kind']} {d['decision'] or ''}: {_cell(d['note'])}"
                                    for d in pkg["decisions"]] + [""]
    out += ["## Notes", ""] + [f"- {n['at']} {n['by']}: {_cell(n['body'])}" for n in pkg["notes"]] + [""]
    out += ["## Audit trail", "", "| # | at | who | action | hash |", "|---|---|---|---|---|"]
    out += [f"| {a['id']} | {a['at']} | {_cell(a['actor'])} | {_cell(a['action'])} | `{a['hash'][:16]}` |"
            for a in pkg["audit"]]
    return "\n".join(out) + "\n"
