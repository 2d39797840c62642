"""Training data: exchange events replayed through the shared feature engine, or a table.

Two sources give one :class:`Dataset` shape:

* **events** (JSON Lines or Parquet of the event contract): events are validated, put in
  event-time order (stable, so ties keep file order) and replayed through
  :class:`stream.features.FeatureEngine`, the code the stream worker runs. Split by time:
  the earliest days train, later days validate, the latest days test.
* **table** (CSV or Parquet of numeric feature columns, ``--label COL``): the feature
  engine is skipped, so distillation can be judged on any labelled dataset. Split by
  ``--time COL`` when given, otherwise stratified at random (seeded).
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson

from stream.artifact import sha256_file
from stream.errors import DataError, InvalidEvent
from stream.features import FEATURE_NAMES, FEATURE_SCHEMA_HASH, FeatureEngine
from stream.schema import Event, event_from_dict, parse_event

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
DAY_MS = 86_400_000


@dataclass
class Dataset:
    """Feature matrix with labels, event times and a train/valid/test assignment."""

    X: np.ndarray
    y: np.ndarray                      # int8 0/1; -1 where the source carried no label
    split: np.ndarray                  # int8: TRAIN, VALID or TEST
    feature_names: tuple[str, ...]
    feature_schema_hash: str
    mode: str                          # "events" or "table"
    source: str
    fingerprint: str                   # sha256 of the source file
    ts: np.ndarray | None = None       # int64 epoch ms (events, or --time)
    scenario: np.ndarray | None = None  # object array of scenario names (events)
    meta: dict = field(default_factory=dict)

    def part(self, which: int) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` of one split."""
        m = self.split == which
        return self.X[m], self.y[m]

    @property
    def labelled(self) -> bool:
        """True when every row has a 0/1 label."""
        return bool(len(self.y)) and bool(np.all(self.y >= 0))

    def require_labels(self) -> None:
        """Raise ``DataError`` unless every row is labelled and both classes occur in training."""
        if not self.labelled:
            missing = int(np.sum(self.y < 0))
            raise DataError(f"{self.source}: {missing} rows have no label; training needs labelled data")
        for name, code in SPLIT_NAMES.items():
            if not np.any(self.split == code):
                raise DataError(f"{self.source}: the {name} split is empty; provide more days or rows")
        y_train = self.y[self.split == TRAIN]
        if y_train.min() == y_train.max():
            raise DataError(f"{self.source}: the training split has only label {int(y_train[0])}")

    def manifest_base(self) -> dict:
        """The manifest fields that describe the data a model was trained on."""
        training = {"path": os.path.abspath(self.source), "sha256": self.fingerprint, "splits": self.describe()}
        if self.mode == "table":
            training["table"] = self.meta
        return {"feature_mode": self.mode, "feature_names": list(self.feature_names),
                "feature_schema_hash": self.feature_schema_hash, "schema_version": 1,
                "training_data": training}

    def describe(self) -> dict:
        """Row and positive counts per split (JSON-ready)."""
        out = {}
        for name, code in SPLIT_NAMES.items():
            m = self.split == code
            out[name] = {"rows": int(m.sum()), "positives": int((self.y[m] == 1).sum())}
        return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many acyclic objects (it would rescan them all)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if not p.is_file():
        raise DataError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty")
    return p


def _progress(total: int | None, desc: str, enabled: bool, unit: str = "ev"):
    from training.progress import progress_bar

    return progress_bar(total, desc, enabled=enabled, unit=unit)


def read_events(path: str | os.PathLike, *, progress: bool = False) -> list[Event]:
    """Read and validate every event of a JSONL or Parquet file.

    Raises ``DataError`` naming the first invalid line (and how many there are): a
    truncated or corrupted history must not silently train a model on part of it.
    """
    p = _check_file(path)
    events: list[Event] = []
    errors: list[str] = []
    n_bad = 0
    with _gc_paused():
        if p.suffix.lower() == ".parquet":
            rows = _parquet_rows(p)
            bar = _progress(len(rows), f"reading {p.name}", progress)
            for i, d in enumerate(rows, 1):
                try:
                    events.append(event_from_dict({k: v for k, v in d.items() if v is not None}))
                except InvalidEvent as exc:
                    n_bad += 1
                    if len(errors) < 3:
                        errors.append(f"row {i}: {exc}")
                if i % 65536 == 0:
                    bar.update(65536)
            bar.close()
        else:
            size = p.stat().st_size
            bar = _progress(size, f"reading {p.name}", progress, unit="B")
            with open(p, "rb") as fh:
                for i, line in enumerate(fh, 1):
                    if i % 65536 == 0:
                        bar.update(fh.tell() - bar.n)
                    if not line.strip():
                        continue
                    try:
                        events.append(parse_event(line))
                    except InvalidEvent as exc:
                        n_bad += 1
                        if len(errors) < 3:
                            errors.append(f"line {i}: {exc}")
            bar.close()
    if n_bad:
        more = f" (and {n_bad - 1} more invalid)" if n_bad > 1 else ""
        raise DataError(f"{p}: {errors[0]}{more}")
    if not events:
        raise DataError(f"{p}: contains no events")
    return events


def _parquet_rows(p: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(p).to_pylist()
    except Exception as exc:  # pyarrow raises many types for a corrupt file
        raise DataError(f"{p}: not a readable Parquet file ({exc.__class__.__name__}: {exc})") from None


def order_by_time(events: list[Event]) -> list[Event]:
    """Events in event-time order, each event id once; ties keep their input order.

    A repeated event id is an upstream duplicate: the stream skips it, so training does too.
    """
    seen: set[str] = set()
    unique = []
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            unique.append(e)
    return sorted(unique, key=lambda e: e.ts)


def build_features(events: list[Event], *, progress: bool = False) -> np.ndarray:
    """Replay events (in the given order) through a fresh feature engine."""
    engine = FeatureEngine()
    if not progress:
        with _gc_paused():
            return engine.replay(events)
    bar = _progress(len(events), "features", True)
    chunks = []
    step = 50_000
    with _gc_paused():
        for start in range(0, len(events), step):
            chunks.append(engine.replay(events[start:start + step]))
            bar.update(min(step, len(events) - start))
    bar.close()
    return np.concatenate(chunks) if chunks else np.zeros((0, len(FEATURE_NAMES)))


def time_split(ts: np.ndarray, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> np.ndarray:
    """Assign rows to train/valid/test by time: whole days when there are enough of them.

    >>> ts = np.arange(10) * DAY_MS
    >>> time_split(ts).tolist()
    [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
    """
    ts = np.asarray(ts, dtype=np.int64)
    split = np.full(len(ts), TEST, dtype=np.int8)
    if len(ts) == 0:
        return split
    days = ts // DAY_MS
    unique = np.unique(days)
    if len(unique) >= 5:
        cut1 = unique[int(round(fractions[0] * len(unique)))]
        cut2 = unique[int(round((fractions[0] + fractions[1]) * len(unique)))]
        split[days < cut2] = VALID
        split[days < cut1] = TRAIN
        return split
    # Too few days: cut on time quantiles of the rows instead.
    order = np.argsort(ts, kind="stable")
    n = len(ts)
    a, b = int(fractions[0] * n), int((fractions[0] + fractions[1]) * n)
    split[order[:b]] = VALID
    split[order[:a]] = TRAIN
    return split


def stratified_split(y: np.ndarray, seed: int = 0,
                     fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> np.ndarray:
    """Random train/valid/test assignment that keeps the positive rate in each part."""
    rng = np.random.default_rng(seed)
    split = np.empty(len(y), dtype=np.int8)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        a = int(round(fractions[0] * len(idx)))
        b = int(round((fractions[0] + fractions[1]) * len(idx)))
        split[idx[:a]], split[idx[a:b]], split[idx[b:]] = TRAIN, VALID, TEST
    return split


def event_dataset(path: str | os.PathLike, *, progress: bool = False) -> Dataset:
    """Events file -> features (shared engine), labels, scenarios, time split."""
    events = order_by_time(read_events(path, progress=progress))
    X = build_features(events, progress=progress)
    y = np.fromiter((-1 if e.label is None else e.label for e in events), dtype=np.int8, count=len(events))
    ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
    scenario = np.array([e.scenario or ("normal" if e.label == 0 else "") for e in events], dtype=object)
    return Dataset(
        X=X, y=y, split=time_split(ts), feature_names=FEATURE_NAMES,
        feature_schema_hash=FEATURE_SCHEMA_HASH, mode="events", source=str(path),
        fingerprint=sha256_file(path), ts=ts, scenario=scenario,
        meta={"accounts": len({e.account_id for e in events})},
    )


def table_schema_hash(names: tuple[str, ...]) -> str:
    """Feature-schema hash of a tabular model: its ordered column names."""
    import hashlib

    return hashlib.sha256(b"table;" + ",".join(names).encode()).hexdigest()


def table_dataset(path: str | os.PathLike, label: str, *, time: str | None = None,
                  seed: int = 0, feature_names: tuple[str, ...] | None = None) -> Dataset:
    """CSV or Parquet of numeric feature columns plus a binary label column.

    ``feature_names`` (from an existing model) pins the columns and their order.
    """
    import pandas as pd

    p = _check_file(path)
    try:
        if p.suffix.lower() == ".parquet":
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, low_memory=False)
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        raise DataError(f"{p}: cannot read table ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if df.empty:
        raise DataError(f"{p}: table has no rows")
    for col in (label, time):
        if col is not None and col not in df.columns:
            raise DataError(f"{p}: no column {col!r} (columns: {', '.join(map(str, df.columns[:20]))})")
    labels = pd.to_numeric(df[label], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        first = df[label][bad].iloc[0]
        raise DataError(f"{p}: label column {label!r} must be 0/1; found {first!r} in {int(bad.sum())} rows")
    if feature_names is None:
        names = tuple(str(c) for c in df.columns if c not in (label, time))
    else:
        missing = [c for c in feature_names if c not in df.columns]
        if missing:
            raise DataError(f"{p}: missing feature columns the model needs: {', '.join(missing[:10])}")
        names = tuple(feature_names)
    if not names:
        raise DataError(f"{p}: no feature columns besides the label")
    features = df[list(names)]
    non_numeric = [c for c in names if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise DataError(f"{p}: non-numeric feature columns: {', '.join(non_numeric[:10])}")
    X = features.to_numpy(dtype=np.float64)
    y = labels.to_numpy(dtype=np.int8)
    ts = None
    if time is not None:
        tcol = df[time]
        if pd.api.types.is_numeric_dtype(tcol):
            ts = tcol.to_numpy(dtype=np.int64)
        else:
            parsed = pd.to_datetime(tcol, errors="coerce", utc=True)
            if parsed.isna().any():
                raise DataError(f"{p}: time column {time!r} has unparseable values")
            ts = parsed.astype("int64").to_numpy() // 1_000_000
        split = time_split(ts)
    else:
        split = stratified_split(y, seed)
    return Dataset(
        X=X, y=y, split=split, feature_names=names, feature_schema_hash=table_schema_hash(names),
        mode="table", source=str(p), fingerprint=sha256_file(p), ts=ts, scenario=None,
        meta={"label": label, "time": time},
    )


def load_dataset(path: str | os.PathLike, *, label: str | None = None, time: str | None = None,
                 seed: int = 0, feature_names: tuple[str, ...] | None = None,
                 progress: bool = False) -> Dataset:
    """Events (no ``label``) or a table (``label`` given)."""
    if label is not None:
        return table_dataset(path, label, time=time, seed=seed, feature_names=feature_names)
    if time is not None:
        raise DataError("--time applies to tables only (use it with --label)")
    return event_dataset(path, progress=progress)


def dumps_json(obj) -> bytes:
    """Pretty JSON for manifests and reports (numpy scalars allowed)."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_SORT_KEYS)
