"""``txwatch promote``: a candidate student passes a gate of stated bounds before it is served.

:func:`check` measures a candidate against the served model and returns every figure with
the list of failures (a :class:`Gate`); :func:`promote` runs it and, only if nothing failed,
switches the served model (:func:`lifecycle.registry.switch`: the pointer the workers poll
and a history record of who, when, why and the figures, in one atomic step);
:func:`rollback` switches back to where the newest promotion still in effect came from.

The gate, each check with its bound:

1. **Verifies.** The candidate loads and verifies (:func:`stream.scoring.student.load_student`:
   every file's sha256, the feature schema an events model is built for) and carries a
   reference profile (:func:`stream.scoring.profile.load_profile`). Bound: no
   ``ArtifactError``. Nothing else is checked when this fails.
2. **Same features.** The candidate's ``feature_schema_hash`` and ``feature_names`` equal
   the served model's. Bound: equal. (The served model must itself verify, or the
   candidate cannot be compared and is refused.)
3. **Same teacher.** The candidate's ``teacher.sha256`` equals the served model's. Bound:
   equal, unless ``new_teacher`` (``--new-teacher``): then a different teacher passes and
   the record says ``"new_teacher": true`` with both teachers.
4. **Still follows its teacher.** The rows of one period (``test``, the latest days, by
   default) of ``events_path``, built by the stream's own feature engine and split by time
   exactly as training splits (:func:`training.dataset.load_dataset`), are scored by the
   candidate and by its teacher (loaded from the candidate's manifest, its sha256 checked).
   :func:`stream.scoring.profile.fidelity` of the two (top-k at the profile's own
   fraction of rows) is held against the figures the profile measured at distill time on
   validation rows, with ``tolerance`` (default 0.05):

   - ``spearman`` >= profile spearman - tolerance
   - ``top_k_overlap`` >= profile top_k_overlap - tolerance
   - ``mean_abs_diff`` <= profile mean_abs_diff + tolerance
   - at least :data:`MIN_ROWS` rows in the period (fewer cannot judge a top-1 % overlap);
   - an undefined figure (NaN: constant scores) fails. ``kl`` is reported, not bounded.

   Skipped (and failed) when check 1 or 2 fails: the rows would not be the candidate's.
5. **Its shadow run**, when it ran as the shadow challenger (it is the challenger now, or
   the workers stored shadow windows of its version): :func:`lifecycle.shadow.gate` with
   :class:`lifecycle.shadow.ShadowBounds` (enough rows scored in shadow, an alert rate within
   2x the champion's, and, with ``labels`` and enough disposed alerts, a precision no more
   than 0.05 below the champion's). A challenger that is promoted stops being the challenger
   in the same transaction.

A refused promotion raises :class:`GateRefused` naming every failing figure with its
measured value and bound; nothing is switched.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lifecycle import registry
from stream.errors import ArtifactError, DataError, TxwatchError
from stream.scoring.artifact import read_artifact

if TYPE_CHECKING:
    import redis

DEFAULT_TOLERANCE = 0.05
DEFAULT_PERIOD = "test"
PERIODS = ("test", "valid", "train", "all")
MIN_ROWS = 2000
# figure -> which side the bound holds (a floor "min" or a ceiling "max")
BOUNDED = {"spearman": "min", "top_k_overlap": "min", "mean_abs_diff": "max"}


class GateRefused(TxwatchError):
    """A candidate that failed the promotion gate; carries the :class:`Gate`."""

    def __init__(self, gate: "Gate") -> None:
        self.gate = gate
        cand = gate.figures.get("candidate", {})
        message = (f"refused to promote {cand.get('dir')} ({cand.get('version') or 'unverified'}): "
                   f"{len(gate.failures)} check(s) failed: " + "; ".join(gate.failures)
                   + "; the served model is unchanged")
        super().__init__(message)


@dataclass(frozen=True)
class Gate:
    """Every figure of one gate run and the failures (empty: the candidate passes)."""

    figures: dict[str, Any]
    failures: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return not self.failures


def judge_fidelity(live: dict[str, Any], reference: dict[str, Any],
                   tolerance: float) -> tuple[dict[str, Any], list[str]]:
    """The bounds the reference figures and ``tolerance`` give, and the live figures that break them.

    >>> ref = {"spearman": 0.95, "top_k_overlap": 0.80, "mean_abs_diff": 0.02}
    >>> bounds, fails = judge_fidelity({"spearman": 0.93, "top_k_overlap": 0.70, "mean_abs_diff": 0.03}, ref, 0.05)
    >>> bounds["spearman"], fails
    ({'min': 0.9}, ['fidelity top_k_overlap: measured 0.7000 < bound 0.7500 (profile 0.8000 - tolerance 0.05)'])
    """
    bounds: dict[str, Any] = {}
    failures: list[str] = []
    for name, side in BOUNDED.items():
        ref, got = reference.get(name), live.get(name)
        if ref is None or not math.isfinite(ref):
            bounds[name] = None
            failures.append(f"fidelity {name}: the reference profile has no figure to bound against")
            continue
        slack = tolerance
        if name == "top_k_overlap" and live.get("k"):
            # The overlap of a top-k is a share of k rows: its sampling error alone is about
            # sqrt(p(1-p)/k) (0.04 at k = 100), so the floor is at least three of those below.
            slack = max(tolerance, 3.0 * math.sqrt(max(ref * (1.0 - ref), 0.0) / live["k"]))
        bound = round(ref - slack if side == "min" else ref + slack, 12)
        bounds[name] = {side: bound}
        op = ">=" if side == "min" else "<="
        if got is None or not math.isfinite(got):
            failures.append(f"fidelity {name}: undefined on these rows (constant scores?); bound {op} {bound:.4f}")
        elif (side == "min" and got < bound) or (side == "max" and got > bound):
            sign, broke = ("-", "<") if side == "min" else ("+", ">")
            failures.append(f"fidelity {name}: measured {got:.4f} {broke} bound {bound:.4f} "
                            f"(profile {ref:.4f} {sign} {'tolerance' if slack == tolerance else '3 standard errors'} "
                            f"{slack:.4g})")
    return bounds, failures


def _load(model_dir: str):
    from training.evaluate import load_any_student

    return load_any_student(model_dir)


def _side(student) -> dict[str, Any]:
    m = student.manifest
    teacher = m.get("teacher") or {}
    return {"dir": student.path, "version": student.version, "family": student.family,
            "feature_mode": m.get("feature_mode"), "feature_schema_hash": m.get("feature_schema_hash"),
            "teacher": {"version": teacher.get("model_version"), "sha256": teacher.get("sha256")}}


def check(candidate_dir: str | os.PathLike, *, served_dir: str | os.PathLike, events_path: str | os.PathLike,
          tolerance: float = DEFAULT_TOLERANCE, new_teacher: bool = False, period: str = DEFAULT_PERIOD,
          shadow: dict[str, Any] | None = None) -> Gate:
    """Run the gate (module docstring) on ``candidate_dir`` against the model at ``served_dir``.

    Problems of the inputs rather than of the candidate (an unreadable events file, a bad
    period or tolerance) raise ``DataError``/``TxwatchError``; everything about the
    candidate is a figure or a failure of the returned :class:`Gate`.
    """
    from stream.scoring.profile import load_profile

    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise TxwatchError(f"--tolerance must be a finite number >= 0, got {tolerance!r}")
    if period not in PERIODS:
        raise DataError(f"--period must be one of {', '.join(PERIODS)}, got {period!r}")
    candidate_dir = os.path.abspath(candidate_dir)
    figures: dict[str, Any] = {"candidate": {"dir": candidate_dir, "version": None},
                               "served": {"dir": str(served_dir), "version": None},
                               "tolerance": tolerance, "checks": {}}
    checks = figures["checks"]
    failures: list[str] = []

    # 1. verifies, with a reference profile
    try:
        student = _load(candidate_dir)
        profile = load_profile(candidate_dir)
    except ArtifactError as exc:
        checks["verify"] = {"ok": False, "error": str(exc)}
        failures.append(f"verify: {exc}")
        return Gate(figures, tuple(failures))
    figures["candidate"] = _side(student)
    checks["verify"] = {"ok": True, "profile_fidelity": profile.fidelity}

    try:
        served = _load(str(served_dir))
    except ArtifactError as exc:
        failures.append(f"served model: {exc}; the candidate cannot be compared with it")
        checks["served"] = {"ok": False, "error": str(exc)}
        return Gate(figures, tuple(failures))
    figures["served"] = {**_side(served), "dir": str(served_dir)}

    # 2. same feature schema
    cand, serv = figures["candidate"], figures["served"]
    same_names = tuple(student.feature_names) == tuple(served.feature_names)
    same_schema = served.same_features(student)
    checks["schema"] = {"ok": same_schema, "candidate": cand["feature_schema_hash"],
                        "served": serv["feature_schema_hash"], "feature_names_equal": same_names}
    if not same_schema:
        failures.append(f"schema: the candidate's features ({cand['feature_mode']}, schema "
                        f"{str(cand['feature_schema_hash'])[:12]}, {len(student.feature_names)} names) are not the "
                        f"served model's ({serv['feature_mode']}, schema {str(serv['feature_schema_hash'])[:12]}, "
                        f"{len(served.feature_names)} names)")

    # 3. same teacher, unless a new one is declared
    same_teacher = bool(cand["teacher"]["sha256"]) and cand["teacher"]["sha256"] == serv["teacher"]["sha256"]
    checks["teacher"] = {"ok": same_teacher or new_teacher, "same": same_teacher, "new_teacher": new_teacher,
                         "candidate": cand["teacher"], "served": serv["teacher"]}
    if not same_teacher and not new_teacher:
        failures.append(f"teacher: the candidate was distilled from teacher {cand['teacher']['version']} "
                        f"(sha256 {str(cand['teacher']['sha256'])[:12]}), the served model from "
                        f"{serv['teacher']['version']} (sha256 {str(serv['teacher']['sha256'])[:12]}); "
                        "pass --new-teacher to promote a student of a new teacher")

    # 4. fidelity to its teacher on the period's rows
    if not same_schema:
        checks["fidelity"] = {"ok": False, "skipped": "the feature schema differs from the served model's"}
        failures.append("fidelity: not measured (the feature schema differs)")
    else:
        fid, fid_failures = _fidelity(student, profile, events_path, period, tolerance)
        checks["fidelity"] = fid
        failures += fid_failures

    # 5. the shadow run, if it had one
    if shadow is not None:
        from lifecycle.shadow import gate as shadow_gate

        bounds, shadow_failures = shadow_gate(shadow)
        checks["shadow"] = {"ok": not shadow_failures, "figures": shadow, "bounds": bounds}
        failures += shadow_failures
    return Gate(figures, tuple(failures))


def teacher_of(student):
    """The teacher ``student`` was distilled from, loaded from the directory its manifest
    records and checked against the recorded sha256; ``ArtifactError`` saying why not."""
    from training.teacher import TEACHER_FILE, load_teacher

    recorded = student.manifest.get("teacher") or {}
    tdir = recorded.get("path")
    if not tdir:
        raise ArtifactError(f"{student.path}: the student records no teacher to measure it against")
    try:
        teacher = load_teacher(tdir, feature_schema_hash=student.manifest["feature_schema_hash"])
    except ArtifactError as exc:
        raise ArtifactError(f"cannot load the teacher of {student.version}: {exc}") from None
    if teacher.manifest["files"].get(TEACHER_FILE) != recorded.get("sha256"):
        raise ArtifactError(f"{tdir} no longer holds the teacher {student.version} was distilled from (sha256 differs)")
    return teacher


def _fidelity(student, profile, events_path, period: str, tolerance: float) -> tuple[dict[str, Any], list[str]]:
    from stream.scoring.profile import fidelity
    from training.dataset import SPLIT_NAMES
    from training.evaluate import dataset_for

    out: dict[str, Any] = {"ok": False, "events": os.path.abspath(events_path), "period": period,
                           "profile": profile.fidelity}
    try:
        teacher = teacher_of(student)
    except ArtifactError as exc:
        out["error"] = str(exc)
        return out, [f"fidelity: {exc}"]
    out["teacher"] = {"dir": str(teacher.path), "version": teacher.version}

    table = (student.manifest.get("training_data") or {}).get("table") or {}
    ds = dataset_for(student, str(events_path), label=None,
                     time=table.get("time") if student.manifest.get("feature_mode") == "table" else None)
    mask = np.ones(len(ds.y), dtype=bool) if period == "all" else ds.split == SPLIT_NAMES[period]
    rows = int(mask.sum())
    out.update(events_sha256=ds.fingerprint, rows=rows, min_rows=MIN_ROWS)
    if rows < MIN_ROWS:
        return out, [f"fidelity: {rows} rows in the {period} period of {events_path}; at least {MIN_ROWS} are "
                     "needed to judge (use a longer window or --period all)"]
    X = ds.X[mask]
    ref = profile.fidelity
    k_frac = ref["k"] / ref["rows"] if ref.get("rows") else 0.01
    live = fidelity(student.score(X), teacher.score(X), k_frac=k_frac)
    bounds, failures = judge_fidelity(live, ref, tolerance)
    out.update(live=live, bounds=bounds, ok=not failures)
    return out, failures


# -- switching ------------------------------------------------------------------------------

def _version(model_dir: str) -> str | None:
    """The model version at ``model_dir`` if the artifact verifies, else None."""
    try:
        return read_artifact(model_dir)[0].get("model_version")
    except ArtifactError:
        return None


def promote(client: redis.Redis, prefix: str, default_dir: str, candidate_dir: str | os.PathLike, *,
            events_path: str | os.PathLike, who: str, why: str, tolerance: float = DEFAULT_TOLERANCE,
            new_teacher: bool = False, period: str = DEFAULT_PERIOD,
            labels: dict[str, int] | None = None) -> dict[str, Any]:
    """Gate ``candidate_dir`` against the served model and, if it passes, serve it; return the record.

    ``labels`` (event id -> 0/1, reviewers' dispositions) let the shadow check judge precision.
    ``GateRefused`` (nothing switched) when a check fails; ``SwitchConflict`` when another
    switch happened while the gate ran; ``ServiceUnavailable`` when Redis cannot be reached.
    """
    from lifecycle import shadow as shadow_run
    from stream.adapters.model_watcher import challenger_key

    served = registry.current(client, prefix, default_dir)
    newest = registry.history(client, prefix, 1)
    candidate = os.path.abspath(candidate_dir)
    if os.path.realpath(candidate) == os.path.realpath(served):
        raise TxwatchError(f"{candidate} is the served model already; nothing to promote")
    challenger = shadow_run.current(client, prefix)
    is_challenger = challenger is not None and os.path.realpath(challenger["dir"]) == os.path.realpath(candidate)
    shadow = None
    version = _version(candidate)
    if version is not None:
        from stream.adapters.redis_store import RedisStore, StoreConfig

        fig = shadow_run.figures(RedisStore(client, StoreConfig(prefix=prefix)), version, labels=labels)
        if is_challenger or fig["rows"]:
            shadow = fig
    gate = check(candidate, served_dir=served, events_path=events_path, tolerance=tolerance,
                 new_teacher=new_teacher, period=period, shadow=shadow)
    if not gate.passed:
        raise GateRefused(gate)
    figures = dict(gate.figures)
    figures["new_teacher"] = bool(new_teacher and not gate.figures["checks"]["teacher"]["same"])
    record = registry.new_record("promote", who=who, why=why,
                                 from_={"dir": served, "version": gate.figures["served"]["version"]},
                                 to={"dir": candidate, "version": gate.figures["candidate"]["version"]},
                                 figures=figures)
    return registry.switch(client, prefix, record, after=newest[0]["id"] if newest else "",
                           also_delete=(challenger_key(prefix),) if is_challenger else ())


def rollback_target(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest promotion still in effect (not undone by a later rollback), or None.

    Rollbacks undo promotions like a stack: promote A->B, promote B->C, rollback (to B),
    rollback again (to A).

    >>> h = [{"id": "r1", "action": "rollback", "undoes": "p2"},
    ...      {"id": "p2", "action": "promote"}, {"id": "p1", "action": "promote"}]
    >>> rollback_target(h)["id"], rollback_target(h[1:])["id"], rollback_target([h[0], h[1]])
    ('p1', 'p2', None)
    """
    undone = set()
    for record in records:  # newest first
        if record.get("action") == "rollback":
            undone.add(record.get("undoes"))
        elif record.get("id") not in undone:
            return record
    return None


def rollback(client: redis.Redis, prefix: str, default_dir: str, *, who: str, why: str) -> dict[str, Any]:
    """Serve again the model the newest promotion still in effect replaced; return the record.

    Refused (``TxwatchError``, nothing switched) when there is no history, when every
    promotion has been rolled back, or when the model to return to no longer verifies.
    """
    records = registry.history(client, prefix, None)
    if not records:
        raise TxwatchError(f"no model history under {registry.history_key(prefix)}: nothing to roll back to")
    target = rollback_target(records)
    if target is None:
        raise TxwatchError("every promotion in the history has been rolled back already: nothing to roll back to")
    back = target["from"]["dir"]
    try:
        version = _load(back).version
    except ArtifactError as exc:
        raise TxwatchError(f"cannot roll back to {back}: it no longer verifies ({exc}); the served model is "
                           "unchanged") from None
    served = registry.current(client, prefix, default_dir)
    record = registry.new_record(
        "rollback", who=who, why=why, from_={"dir": served, "version": _version(served)},
        to={"dir": back, "version": version}, undoes=target["id"],
        figures={"undoes": {"id": target["id"], "at": target["at"], "who": target["who"],
                            "from": target["from"], "to": target["to"]}})
    return registry.switch(client, prefix, record, after=records[0]["id"])


def status(client: redis.Redis, prefix: str, default_dir: str, n: int = 10, *, minutes: float = 24 * 60,
           labels: dict[str, int] | None = None) -> dict[str, Any]:
    """The served model (champion) and the challenger, each with its latest live fidelity
    window, the challenger's shadow figures over the last ``minutes``, and the newest ``n``
    history records."""
    from lifecycle import fidelity, shadow
    from stream.adapters.redis_store import RedisStore, StoreConfig

    pointer = registry.pointer(client, prefix)
    served = pointer or default_dir
    try:
        version, error = read_artifact(served)[0].get("model_version"), None
    except ArtifactError as exc:
        version, error = None, str(exc)
    out = {"served": {"dir": served, "version": version,
                      "source": "TXWATCH_MODEL_DIR" if pointer is None else registry.pointer_key(prefix)},
           "keys": {"pointer": registry.pointer_key(prefix), "history": registry.history_key(prefix)},
           "history": registry.history(client, prefix, n)}
    if error:
        out["served"]["error"] = error
    if version:
        out["served"]["fidelity"] = (fidelity.latest(client, prefix, version) or [None])[0]
    challenger = shadow.current(client, prefix)
    if challenger is not None:
        challenger["fidelity"] = (fidelity.latest(client, prefix, challenger["version"]) or [None])[0]
        challenger["shadow"] = shadow.figures(RedisStore(client, StoreConfig(prefix=prefix)), challenger["version"],
                                              minutes=minutes, labels=labels)
        challenger["shadow"]["gate"] = dict(zip(("bounds", "failures"), shadow.gate(challenger["shadow"])))
    out["challenger"] = challenger
    out["keys"]["challenger"] = shadow.challenger_key(prefix)
    return out
