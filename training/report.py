"""Evaluation report of a teacher/student pair: Markdown tables, JSON metrics, PNG plots.

:func:`write_report` writes into one directory::

    report.md         title, the metrics as tables, the plots embedded by relative link
    metrics.json      the metrics dict as given, pretty-printed (nan/inf -> null)
    pr_curves.png     precision-recall curves of teacher and student, AUPRC in the legend
    scatter.png       student vs teacher score per event (log-odds when probabilities)
    calibration.png   reliability curves of both models, with per-bin event counts

The metrics dict is rendered generically, whatever keys it has:

* scalars of a dict become a two-column ``key | value`` table;
* a dict of flat dicts (``{"teacher": {...}, "student": {...}}``) becomes one table
  with a column per outer key (rows and columns swap when there are more outer keys
  than inner keys, e.g. scenarios × {events, recall});
* sibling dicts with the same scalar keys (two :func:`training.metrics.summarize`
  results) are merged into one comparison table, and their nested dicts likewise;
* a dict of dicts of flat dicts (per-scenario results per model) becomes one table
  with a row per middle key; inner keys whose values agree across the outer keys
  (the number of events of a scenario) get a single column, others one per outer key.

Plots use :class:`matplotlib.figure.Figure` with the Agg canvas directly: pyplot is
not imported and no global matplotlib state (backend, rcParams, open figures) changes.
Everything is computed in memory first and each file is written to a temporary file
and moved into place with ``os.replace``; ``report.md`` goes last, so a failure never
leaves a half-written report behind (an earlier report.md stays as it was).
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from training import metrics as M

__all__ = ["write_report", "PLOT_FILES", "MAX_SCATTER_POINTS"]

PLOT_FILES = {
    "pr_curves.png": "Precision-recall curves",
    "scatter.png": "Student vs teacher scores",
    "calibration.png": "Calibration (reliability) curves",
}
MAX_SCATTER_POINTS = 50_000
CALIBRATION_BINS = 15
MAX_CURVE_POINTS = 5_000
_DPI = 110
_COLORS = {"teacher": "#1f77b4", "student": "#d62728"}
_LOGIT_EPS = 1e-6


def write_report(
    report_dir: str | os.PathLike[str],
    *,
    metrics: dict,
    y: Any,
    teacher_p: Any,
    student_p: Any,
    title: str = "txwatch evaluation",
) -> Path:
    """Write report.md, metrics.json and the three PNG plots; return the report.md path.

    ``y`` are the binary labels and ``teacher_p``/``student_p`` the two models' scores
    on the same events (used for the plots; the tables come from ``metrics`` only).
    The precision-recall plot marks each model's operating point: the ``precision``
    and ``recall`` of ``metrics["teacher"]``/``metrics["student"]`` when present (as
    :func:`training.metrics.summarize` gives them), else the point at
    ``metrics["threshold"]`` (a number, or a ``{"teacher": t, "student": t}`` dict).
    Raises ``ValueError`` for invalid arrays and ``TypeError`` when ``metrics`` is not
    a dict or holds a value that JSON cannot represent.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    y_arr = M._labels(y)
    t_arr = M._scores(teacher_p, "teacher_p")
    s_arr = M._scores(student_p, "student_p")
    if not y_arr.size == t_arr.size == s_arr.size:
        raise ValueError(
            "y, teacher_p and student_p have different lengths "
            f"({y_arr.size}, {t_arr.size}, {s_arr.size})"
        )

    # Everything is built in memory before the first byte is written.
    clean = _jsonable(metrics, "metrics")
    json_text = json.dumps(clean, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    markdown = _render_markdown(title, clean, y_arr)
    points = _operating_points(clean, y_arr, {"teacher": t_arr, "student": s_arr})
    pngs = {
        "pr_curves.png": _png(_pr_figure(y_arr, t_arr, s_arr, points)),
        "scatter.png": _png(_scatter_figure(y_arr, t_arr, s_arr)),
        "calibration.png": _png(_calibration_figure(y_arr, t_arr, s_arr)),
    }

    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in pngs.items():
        _atomic_write(out / name, data)
    _atomic_write(out / "metrics.json", json_text.encode("utf-8"))
    report = out / "report.md"
    _atomic_write(report, markdown.encode("utf-8"))
    return report


# --------------------------------------------------------------------------- files


def _atomic_write(path: Path, data: bytes) -> None:
    # os.open with mode 0o666 (not mkstemp's 0o600) so the file gets the usual umask mode.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _jsonable(value: Any, where: str) -> Any:
    """A copy of ``value`` made of JSON types only; nan/inf become None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, (bool, str)):
            return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(list(value))]
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------- markdown


def _render_markdown(title: str, metrics: dict, y: np.ndarray) -> str:
    n, pos = int(y.size), int(np.count_nonzero(y))
    lines = [
        f"# {_cell(title)}",
        "",
        f"Evaluated on {n} events, {pos} positives "
        f"(prevalence {_fmt(pos / n)}). Full-precision values are in "
        "[metrics.json](metrics.json).",
        "",
    ]
    body = _render(None, metrics, 2)
    lines += body if body else ["_No metrics given._", ""]
    lines += ["## Plots", ""]
    for name, alt in PLOT_FILES.items():
        lines += [f"### {alt}", "", f"![{alt}]({name})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _is_flat(v: Any) -> bool:
    return isinstance(v, dict) and not any(isinstance(x, dict) for x in v.values())


def _is_matrix(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and bool(v)
        and all(isinstance(x, dict) and x and _is_flat(x) for x in v.values())
    )


def _is_cube(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(_is_matrix(x) for x in v.values())


def _heading(title: str | None, level: int) -> list[str]:
    if title is None:
        return []
    return ["#" * min(level, 6) + " " + _cell(title), ""]


def _render(title: str | None, value: dict, level: int) -> list[str]:
    """Markdown lines for one dict under an optional heading."""
    if not value:
        return _heading(title, level) + ["_(empty)_", ""] if title is not None else []
    if _is_flat(value):
        return _heading(title, level) + _kv_table(value) + [""]
    if _is_matrix(value):
        return _heading(title, level) + _matrix_table(value) + [""]
    if _is_cube(value):
        return _heading(title, level) + _cube_table(value) + [""]
    return _render_mixed(title, value, level)


def _render_mixed(title: str | None, value: dict, level: int) -> list[str]:
    lines = _heading(title, level)
    child_level = level + 1 if title is not None else level
    scalars = {k: v for k, v in value.items() if not isinstance(v, dict)}
    if scalars:
        if title is None:
            lines += _heading("Overview", level)
        lines += _kv_table(scalars) + [""]

    # Sibling dicts sharing the same (non-empty) set of scalar keys form a group.
    children = {k: v for k, v in value.items() if isinstance(v, dict)}
    signature = {
        k: frozenset(x for x, y in v.items() if not isinstance(y, dict))
        for k, v in children.items()
    }
    groups: dict[frozenset, list[str]] = {}
    for k, sig in signature.items():
        if sig:
            groups.setdefault(sig, []).append(k)
    done: set[str] = set()
    for k, child in children.items():
        if k in done:
            continue
        members = groups.get(signature[k], [])
        if len(members) >= 2:
            done.update(members)
            lines += _render_group({m: children[m] for m in members}, child_level)
        else:
            done.add(k)
            lines += _render(k, child, child_level)
    return lines


def _render_group(group: dict[str, dict], level: int) -> list[str]:
    """Sibling dicts with the same scalar keys, e.g. teacher and student summaries."""
    names = list(group)
    lines = _heading(" vs ".join(names), level)
    scalar_part = {
        name: {k: v for k, v in d.items() if not isinstance(v, dict)} for name, d in group.items()
    }
    lines += _columns_table(scalar_part, _union_keys(scalar_part.values())) + [""]
    nested_keys = _union_keys(
        {k: v for k, v in d.items() if isinstance(v, dict)} for d in group.values()
    )
    for key in nested_keys:
        merged = {name: d[key] for name, d in group.items() if isinstance(d.get(key), dict)}
        lines += _render(key, merged, level + 1)
    return lines


def _union_keys(dicts: Any) -> list[str]:
    keys: dict[str, None] = {}
    for d in dicts:
        for k in d:
            keys.setdefault(k, None)
    return list(keys)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join([" :--- "] + [" ---: "] * (len(header) - 1)) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _kv_table(d: dict) -> list[str]:
    return _table(["key", "value"], [[_cell(k), _fmt(v)] for k, v in d.items()])


def _columns_table(cols: dict[str, dict], row_keys: list[str]) -> list[str]:
    """Rows = ``row_keys``, one column per entry of ``cols``."""
    header = [""] + [_cell(c) for c in cols]
    rows = [[_cell(r)] + [_fmt(d[r]) if r in d else "" for d in cols.values()] for r in row_keys]
    return _table(header, rows)


def _matrix_table(d: dict[str, dict]) -> list[str]:
    inner = _union_keys(d.values())
    if len(d) > len(inner):
        # Many outer keys (e.g. scenarios): one row each, one column per inner key.
        header = [""] + [_cell(k) for k in inner]
        rows = [
            [_cell(o)] + [_fmt(row[k]) if k in row else "" for k in inner]
            for o, row in d.items()
        ]
        return _table(header, rows)
    return _columns_table(d, inner)


def _cube_table(d: dict[str, dict[str, dict]]) -> list[str]:
    """Outer (models) × middle (rows, e.g. scenarios) × inner (events, recall)."""
    outer = list(d)
    middle = _union_keys(d.values())
    inner = _union_keys(row for m in d.values() for row in m.values())
    columns: list[tuple[str, str | None]] = []  # (inner key, outer key or None if shared)
    for k in inner:
        if _agrees(d, middle, k):
            columns.append((k, None))
        else:
            columns += [(k, o) for o in outer]
    header = [""] + [_cell(k if o is None else f"{k} ({o})") for k, o in columns]
    rows = []
    for m in middle:
        row = [_cell(m)]
        for k, o in columns:
            src = outer if o is None else [o]
            vals = [d[x][m][k] for x in src if m in d[x] and k in d[x][m]]
            row.append(_fmt(vals[0]) if vals else "")
        rows.append(row)
    return _table(header, rows)


def _agrees(d: dict[str, dict[str, dict]], middle: list[str], k: str) -> bool:
    """True if inner key ``k`` has one value per row, present in every outer dict."""
    if len(d) < 2:
        return True
    for m in middle:
        vals = []
        for outer in d.values():
            if m not in outer or k not in outer[m]:
                return False
            vals.append(outer[m][k])
        if any(v != vals[0] for v in vals[1:]):
            return False
    return True


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        if v == 0.0 or 1e-3 <= abs(v) < 1e4:
            return f"{v:.4f}"
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return _cell(v)


# --------------------------------------------------------------------------- plots


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _operating_points(
    metrics: dict, y: np.ndarray, scores: dict[str, np.ndarray]
) -> dict[str, tuple[float, float]]:
    """(precision, recall) per model: from its summary, else at ``metrics["threshold"]``."""
    t = metrics.get("threshold")
    thresholds = {}
    if _number(t):
        thresholds = {name: float(t) for name in scores}
    elif isinstance(t, dict):
        thresholds = {k: float(v) for k, v in t.items() if k in scores and _number(v)}
    points = {}
    for name, p in scores.items():
        summary = metrics.get(name)
        if (isinstance(summary, dict) and _number(summary.get("precision"))
                and _number(summary.get("recall"))):
            points[name] = (float(summary["precision"]), float(summary["recall"]))
        elif name in thresholds:
            points[name] = M.precision_recall_at(y, p, thresholds[name])
    return points


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _is_prob(*arrays: np.ndarray) -> bool:
    return all(a.min() >= 0.0 and a.max() <= 1.0 for a in arrays)


def _decimate(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= MAX_CURVE_POINTS:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, MAX_CURVE_POINTS).round().astype(np.int64))
    return x[idx], y[idx]


def _pr_figure(
    y: np.ndarray, teacher: np.ndarray, student: np.ndarray,
    points: dict[str, tuple[float, float]],
) -> Figure:
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("Precision-recall curves")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        ax.text(0.5, 0.5, "no positive events: precision-recall undefined",
                ha="center", va="center", transform=ax.transAxes)
        return fig
    for name, p in (("teacher", teacher), ("student", student)):
        color = _COLORS[name]
        prec, rec, _ = precision_recall_curve(y, p)
        rec, prec = _decimate(rec, prec)
        ax.step(rec, prec, where="post", color=color, lw=1.6,
                label=f"{name} (AUPRC {M.auprc(y, p):.3f})")
        if name in points:
            op_p, op_r = points[name]
            ax.plot([op_r], [op_p], "o", color=color, ms=7, mec="black",
                    label=f"{name} operating point (P {op_p:.3f}, R {op_r:.3f})")
    prevalence = n_pos / y.size
    ax.axhline(prevalence, color="grey", ls=":", lw=1,
               label=f"no skill (prevalence {prevalence:.3g})")
    ax.legend(loc="best", fontsize="small")
    return fig


def _subsample(y: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_points`` events, keeping (up to half) the positives."""
    n = y.size
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    n_neg = min(neg.size, max_points - min(pos.size, max_points // 2))
    n_pos = min(pos.size, max_points - n_neg)
    keep = np.concatenate([
        rng.choice(pos, n_pos, replace=False),
        rng.choice(neg, n_neg, replace=False),
    ])
    return np.sort(keep)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _LOGIT_EPS, 1.0 - _LOGIT_EPS)
    return np.log(q) - np.log1p(-q)


def _scatter_figure(y: np.ndarray, teacher: np.ndarray, student: np.ndarray) -> Figure:
    idx = _subsample(y, MAX_SCATTER_POINTS)
    prob = _is_prob(teacher, student)
    tx, sy = (_logit(teacher[idx]), _logit(student[idx])) if prob else (teacher[idx], student[idx])
    yl = y[idx]
    unit = " (log-odds)" if prob else ""
    fig = Figure(figsize=(6.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    rho = M.spearman(teacher, student)
    rho_txt = "n/a" if math.isnan(rho) else f"{rho:.3f}"
    shown = f"all {y.size} events" if idx.size == y.size else f"{idx.size} of {y.size} events"
    ax.set_title(f"Student vs teacher scores\nSpearman \u03c1 = {rho_txt}; {shown}",
                 fontsize="medium")
    ax.set_xlabel(f"teacher score{unit}")
    ax.set_ylabel(f"student score{unit}")
    neg, pos = yl == 0, yl == 1
    ax.scatter(tx[neg], sy[neg], s=4, alpha=0.3, color="#7f7f7f", lw=0, rasterized=True,
               label=f"negative ({int(neg.sum())})")
    ax.scatter(tx[pos], sy[pos], s=8, alpha=0.7, color=_COLORS["student"], lw=0,
               rasterized=True, label=f"positive ({int(pos.sum())})")
    lo = float(min(tx.min(), sy.min()))
    hi = float(max(tx.max(), sy.max()))
    pad = 0.03 * (hi - lo) if hi > lo else 1.0
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="student = teacher")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", markerscale=2)
    return fig


def _calibration_figure(y: np.ndarray, teacher: np.ndarray, student: np.ndarray) -> Figure:
    fig = Figure(figsize=(7, 7), layout="constrained")
    models = [(n, p) for n, p in (("teacher", teacher), ("student", student)) if _is_prob(p)]
    if not models:
        ax = fig.add_subplot()
        ax.set_title("Calibration (reliability) curves")
        ax.set_xlabel("Mean predicted probability")
        ax.set_ylabel("Fraction of positives")
        ax.text(0.5, 0.5, "scores are not probabilities in [0, 1]:\nno reliability curve",
                ha="center", va="center", transform=ax.transAxes)
        return fig
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.set_title(f"Calibration (reliability) curves, {CALIBRATION_BINS} equal-width bins")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    edges = np.linspace(0.0, 1.0, CALIBRATION_BINS + 1)
    for name, p in models:
        color = _COLORS[name]
        mean_pred, frac_pos, _ = M.calibration_curve(y, p, bins=CALIBRATION_BINS)
        ece = M.expected_calibration_error(y, p, bins=CALIBRATION_BINS)
        ax.plot(mean_pred, frac_pos, "o-", color=color, ms=4, lw=1.4,
                label=f"{name} (ECE {ece:.4f})")
        ax_n.hist(p, bins=edges, histtype="step", color=color, lw=1.4, label=name)
    if len(models) < 2:
        missing = {"teacher", "student"} - {n for n, _ in models}
        ax.plot([], [], " ", label=f"{missing.pop()}: scores not in [0, 1], not shown")
    ax.set_ylabel("Fraction of positives")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax_n.set_yscale("log")
    ax_n.set_xlabel("Predicted probability (curve points: bin means)")
    ax_n.set_ylabel("Events per bin")
    ax_n.grid(True, alpha=0.3)
    ax_n.legend(loc="upper right", fontsize="small")
    return fig
