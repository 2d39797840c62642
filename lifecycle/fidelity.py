"""``txwatch fidelity``: live agreement of the served students with their teachers.

The workers send a sample of their scored feature rows, with the student's scores and the
model version, to a Redis stream (:mod:`stream.events.samples`). This process, which may
hold the large teachers the workers never load, scores the same rows with the teacher each
student was distilled from and keeps fidelity per window (``--window-s``, aligned to the
wall clock, per model version): Spearman, top-k overlap (k at the profile's own share of
rows), mean |Δp| and KL (:func:`stream.scoring.profile.fidelity`). A window of at least
``min_rows`` rows is judged against the figures the student's reference profile measured at
distill time, with the promotion gate's bounds (:func:`lifecycle.promote.judge_fidelity`):
below the profile's figure minus the tolerance is an alarm.

A sample's model version is looked up among the directories txwatch knows: the served
pointer and its history, the challenger, and TXWATCH_MODEL_DIR. A version found in none of
them (a worker serving a model nobody promoted, or a forged entry) is refused: logged once,
counted per version in the report, never scored. A malformed entry is counted as bad.

Each closed window is stored in Redis, newest first, under :func:`windows_key` (the last
:data:`WINDOWS_KEPT`), and the stream position read so far under :func:`cursor_key`. A
restart resumes after the cursor; the rows of windows still open at the stop are not
counted again (a window closed after a restart says how many rows it holds). While Redis is
unreachable the follower retries with backoff (up to 10 s) and keeps the windows it closed;
``--once`` stops with a clear error.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import orjson
import redis

from lifecycle import registry
from lifecycle.promote import DEFAULT_TOLERANCE, judge_fidelity, teacher_of
from stream.adapters.model_watcher import challenger_dir, challenger_key
from stream.core.drift import window_start
from stream.errors import ArtifactError, DataError, ServiceUnavailable
from stream.events.samples import decode_sample
from stream.scoring.artifact import read_artifact

log = logging.getLogger("txwatch.fidelity")

WINDOWS_KEPT = 10_000
DEFAULT_WINDOW_S = 300.0
DEFAULT_MIN_ROWS = 500


def windows_key(prefix: str, version: str) -> str:
    """The list of a model version's closed fidelity windows, newest first (JSON).

    >>> windows_key("txwatch", "m1")
    'txwatch:fidelity:windows:m1'
    """
    return f"{prefix}:fidelity:windows:{version}"


def cursor_key(prefix: str) -> str:
    """The id of the last sample entry ``txwatch fidelity`` has read."""
    return f"{prefix}:fidelity:cursor"


@dataclass
class Known:
    """A model version the monitor can judge: its student, teacher and reference profile."""

    dir: str
    student: Any
    teacher: Any
    profile: Any


class ModelBook:
    """Model version -> :class:`Known`, from the directories txwatch knows (module docstring)."""

    def __init__(self, client, prefix: str, default_dir: str, rescan_s: float = 10.0) -> None:
        self.client, self.prefix, self.default_dir, self.rescan_s = client, prefix, default_dir, rescan_s
        self._known: dict[str, Known] = {}
        self._missing: dict[str, float] = {}   # version -> when it was last looked for in vain
        self.errors: dict[str, str] = {}       # version -> why it cannot be judged

    def directories(self) -> list[str]:
        """Every student directory txwatch knows, served first."""
        dirs = [registry.current(self.client, self.prefix, self.default_dir)]
        ch = challenger_dir(self.client.get(challenger_key(self.prefix)))
        if ch:
            dirs.append(ch)
        for record in registry.history(self.client, self.prefix, 200):
            dirs += [record["to"]["dir"], record["from"]["dir"]]
        dirs.append(self.default_dir)
        return list(dict.fromkeys(dirs))

    def get(self, version: str) -> Known | None:
        """The version's models, or None when no known directory holds it (or it cannot be judged)."""
        if version in self._known:
            return self._known[version]
        if time.monotonic() - self._missing.get(version, -math.inf) < self.rescan_s:
            return None
        for d in self.directories():
            try:
                if read_artifact(d)[0].get("model_version") != version:
                    continue
            except ArtifactError:
                continue
            try:
                known = self._load(d)
            except ArtifactError as exc:
                self.errors[version] = str(exc)
                log.error("samples of %s cannot be judged: %s", version, exc)
                break
            self._known[version] = known
            return known
        else:
            self.errors.setdefault(version, "no model directory txwatch knows holds this version")
        self._missing[version] = time.monotonic()
        return None

    @staticmethod
    def _load(d: str) -> Known:
        from stream.scoring.profile import load_profile
        from training.evaluate import load_any_student

        student = load_any_student(d)
        return Known(d, student, teacher_of(student), load_profile(d))


@dataclass
class Window:
    """The rows one model version sampled in one window: the student's and the teacher's scores."""

    version: str
    start_s: int
    student: list[np.ndarray] = field(default_factory=list)
    teacher: list[np.ndarray] = field(default_factory=list)
    rows: int = 0


class FidelityMonitor:
    """Scores sample entries with the teachers and closes windows (pure logic; I/O is the caller's)."""

    def __init__(self, book: ModelBook, *, window_s: float = DEFAULT_WINDOW_S, tolerance: float = DEFAULT_TOLERANCE,
                 min_rows: int = DEFAULT_MIN_ROWS, now: Callable[[], float] = time.time) -> None:
        self.book, self.window_s, self.tolerance, self.min_rows, self._now = book, window_s, tolerance, min_rows, now
        self.open: dict[str, Window] = {}
        self.unknown: dict[str, int] = {}   # version -> rows refused
        self.bad = 0                         # malformed entries

    def add(self, fields) -> list[dict[str, Any]]:
        """Take one stream entry; the windows it closes (judged)."""
        try:
            sample = decode_sample(fields)
        except DataError as exc:
            self.bad += 1
            log.warning("%s (entry skipped)", exc)
            return []
        known = self.book.get(sample.model_version)
        if known is None:
            if sample.model_version not in self.unknown:
                log.error("fidelity samples from model version %s refused: %s", sample.model_version,
                          self.book.errors.get(sample.model_version, "unknown version"))
            self.unknown[sample.model_version] = self.unknown.get(sample.model_version, 0) + len(sample.ids)
            return []
        if sample.rows.shape[1] != len(known.student.feature_names):
            self.bad += 1
            log.warning("fidelity sample of %s has %d features, the model %d (entry skipped)",
                        sample.model_version, sample.rows.shape[1], len(known.student.feature_names))
            return []
        start = window_start(sample.at_ms / 1000, self.window_s)
        closed = []
        w = self.open.get(sample.model_version)
        if w is not None and w.start_s != start:
            closed.append(self._judge(self.open.pop(sample.model_version)))
            w = None
        if w is None:
            w = self.open[sample.model_version] = Window(sample.model_version, start)
        w.student.append(sample.scores)
        w.teacher.append(known.teacher.score(sample.rows))
        w.rows += len(sample.ids)
        return closed

    def due(self, grace_s: float = 5.0) -> list[dict[str, Any]]:
        """Close the windows whose end passed more than ``grace_s`` ago (workers send every second)."""
        now = self._now()
        ended = [v for v, w in self.open.items() if now >= w.start_s + self.window_s + grace_s]
        return [self._judge(self.open.pop(v)) for v in ended]

    def close_all(self) -> list[dict[str, Any]]:
        """Close every open window (``--once``: report what there is)."""
        out = [self._judge(w) for w in self.open.values()]
        self.open.clear()
        return out

    def _judge(self, w: Window) -> dict[str, Any]:
        from stream.scoring.profile import fidelity

        known = self.book.get(w.version)
        ref = known.profile.fidelity
        k_frac = ref["k"] / ref["rows"] if ref.get("rows") else 0.01
        s, t = np.concatenate(w.student), np.concatenate(w.teacher)
        out: dict[str, Any] = {"model_version": w.version, "window_start_s": w.start_s, "window_s": self.window_s,
                               "rows": w.rows, "min_rows": self.min_rows, "profile": ref,
                               "tolerance": self.tolerance}
        if w.rows < 2:
            out.update(live=None, bounds=None, alarms=[], judged=False)
            return out
        live = fidelity(s, t, k_frac=k_frac)
        bounds, failures = judge_fidelity(live, ref, self.tolerance)
        judged = w.rows >= self.min_rows
        out.update(live=live, bounds=bounds, judged=judged, alarms=failures if judged else [])
        return out


def store_window(client, prefix: str, result: dict[str, Any]) -> None:
    """Keep a closed window's figures (newest first, the last WINDOWS_KEPT)."""
    key = windows_key(prefix, result["model_version"])
    pipe = client.pipeline(transaction=False)
    pipe.lpush(key, orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY))
    pipe.ltrim(key, 0, WINDOWS_KEPT - 1)
    pipe.execute()


def latest(client, prefix: str, version: str, n: int = 1) -> list[dict[str, Any]]:
    """The newest ``n`` stored windows of a model version."""
    return [orjson.loads(x) for x in client.lrange(windows_key(prefix, version), 0, n - 1)]


def run(store, client, prefix: str, default_dir: str, *, once: bool, from_start: bool = False,
        window_s: float = DEFAULT_WINDOW_S, tolerance: float = DEFAULT_TOLERANCE, min_rows: int = DEFAULT_MIN_ROWS,
        emit: Callable[[dict[str, Any]], None] = lambda r: None, should_stop: Callable[[], bool] = lambda: False,
        ) -> dict[str, Any]:
    """Read sample entries after the stored cursor, score them with the teachers, store and
    ``emit`` each closed window. ``once``: stop when the stream is read to its end and close
    the open windows; otherwise follow the stream until ``should_stop``. Returns the run's
    report (its windows, refused versions, bad entries, alarms)."""
    monitor = FidelityMonitor(ModelBook(client, prefix, default_dir), window_s=window_s, tolerance=tolerance,
                              min_rows=min_rows)
    windows: list[dict[str, Any]] = []
    unstored: list[dict[str, Any]] = []   # closed windows Redis has not taken yet
    entries = 0
    cursor: str | None = None
    delay = 0.5

    def closed(results: list[dict[str, Any]]) -> None:
        windows.extend(results)
        unstored.extend(results)

    def store_closed() -> None:
        while unstored:
            store_window(client, prefix, unstored[0])
            emit(unstored.pop(0))   # once stored: what is printed can be read back

    while not should_stop():
        try:
            if cursor is None:
                cursor = "0" if from_start else ((client.get(cursor_key(prefix)) or b"0").decode())
            batch = store.samples_after(cursor, count=200, block_ms=None if once else 1000)
            for entry_id, fields in batch:
                closed(monitor.add(fields))
                cursor = entry_id
                entries += 1
            if not once:
                closed(monitor.due())
            store_closed()
            if batch:
                client.set(cursor_key(prefix), cursor)
        except (redis.RedisError, ServiceUnavailable) as exc:
            if once:
                raise ServiceUnavailable(f"cannot reach Redis ({exc.__class__.__name__}: {exc}); read {entries} "
                                         "sample entries before it went away") from None
            log.warning("Redis unreachable (%s); retrying in %.1fs", exc, delay)
            until = time.monotonic() + delay
            while time.monotonic() < until and not should_stop():  # a stop is not held by the backoff
                time.sleep(0.1)
            delay = min(delay * 2, 10.0)
            continue
        delay = 0.5
        if once and not batch:
            break
    if once:
        closed(monitor.close_all())
        try:
            store_closed()
        except redis.RedisError as exc:
            raise ServiceUnavailable(f"cannot reach Redis ({exc}); the closed windows were not stored") from None
    alarms = [f"{r['model_version']} window {r['window_start_s']}: {a}" for r in windows for a in r["alarms"]]
    alarms += [f"samples from model version {v} refused ({n} rows): {monitor.book.errors.get(v, 'unknown version')}"
               for v, n in monitor.unknown.items()]
    return {"entries": entries, "windows": windows, "unknown_versions": monitor.unknown, "bad_entries": monitor.bad,
            "cursor": cursor, "alarms": alarms, "verdict": "alarm" if alarms else "ok"}
