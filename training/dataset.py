"""Training data: exchange events replayed through the shared feature engine, or a table.

Two sources give one :class:`Dataset` shape:

* **events** (JSON Lines or Parquet of the event contract): events are validated and
  replayed **in file order, the order the stream receives them**, through the worker's
  own admission and compiled feature kernel (:mod:`stream.features.admission`): a
  duplicate delivery is skipped, an event beyond the lateness tolerance is dropped (the
  stream dead-letters it), a late one within it is applied with ``late = 1``; both drops
  are counted. Split by time: the earliest days train, later days validate, the latest
  days test.
* **table** (CSV or Parquet of numeric feature columns, ``--label COL``): the feature
  engine is skipped, so distillation can be judged on any labelled dataset. Split by
  ``--time COL`` when given, otherwise stratified at random (seeded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

import numpy as np
import orjson

from stream.errors import DataError
from stream.events.files import check_file, read_events
from stream.events.labels import read_labels
from stream.events.schema import Event
from stream.features.admission import StreamFeatures, replay_stream
from stream.features.layout import FEATURE_NAMES, FEATURE_SCHEMA_HASH
from stream.progress import progress_bar
from stream.scoring.artifact import sha256_file

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
DAY_MS = 86_400_000
# Reviewer labels: a labels file (stream.events.labels) or its {event_id: 0|1}.
Labels = Union[str, os.PathLike, Mapping[str, int], None]


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
        else:
            training["dropped"] = self.meta["dropped"]  # what the stream would not apply, counted
            if "reviewer_labels" in self.meta:  # reviewers' decisions that replaced the events' labels
                training["reviewer_labels"] = self.meta["reviewer_labels"]
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


def build_features(events: Sequence[Event], *, progress: bool = False) -> StreamFeatures:
    """Features of ``events`` replayed in the given order as the stream would apply them:
    the worker's admission (duplicates skipped, events beyond the lateness tolerance
    refused) and its compiled kernel (:func:`stream.features.admission.replay_stream`)."""
    with progress_bar(len(events), "features", enabled=progress) as bar:
        return replay_stream(events, on_progress=bar.update)


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


def event_dataset(path: str | os.PathLike, *, labels: Labels = None, progress: bool = False) -> Dataset:
    """Events file -> features (the stream's admission and kernel, in file order), labels,
    scenarios, time split. Events the stream would not apply are dropped and counted in
    ``meta["dropped"]``: duplicates (skipped) and events too late to apply (dead-lettered).

    ``labels``: reviewers' decisions, a labels file (:mod:`stream.events.labels`) or its
    ``{event_id: 0|1}``; they override the events' own labels (:func:`apply_reviewer_labels`)
    and their counts go to ``meta["reviewer_labels"]``.
    """
    source = None
    if labels is not None and not isinstance(labels, Mapping):
        source = os.path.abspath(labels)
        labels = read_labels(labels)  # before the replay: a bad labels file fails fast
    events = read_events(path, progress=progress)
    features = build_features(events, progress=progress)
    kept = [events[i] for i in features.applied.tolist()]
    y = np.fromiter((-1 if e.label is None else e.label for e in kept), dtype=np.int8, count=len(kept))
    meta = {"accounts": len({e.account_id for e in kept}), "events": len(events),
            "dropped": {"duplicates": len(features.duplicates), "late": len(features.late)}}
    if labels is not None:
        meta["reviewer_labels"] = {"file": source, **apply_reviewer_labels(kept, y, labels)}
    ts = np.fromiter((e.ts for e in kept), dtype=np.int64, count=len(kept))
    scenario = np.array([e.scenario or ("normal" if label == 0 else "") for e, label in zip(kept, y.tolist())],
                        dtype=object)
    return Dataset(
        X=features.X, y=y, split=time_split(ts), feature_names=FEATURE_NAMES,
        feature_schema_hash=FEATURE_SCHEMA_HASH, mode="events", source=str(path),
        fingerprint=sha256_file(path), ts=ts, scenario=scenario, meta=meta,
    )


def apply_reviewer_labels(events: Sequence[Event], y: np.ndarray, labels: Mapping[str, int]) -> dict[str, int]:
    """Give every event a reviewer decided the reviewer's label, in place in ``y`` (the
    events' own labels, -1 for none, row for row with ``events``); the one place reviewer
    labels enter training. Returns the counts: ``records`` (events the labels decide),
    ``matched`` (of those, events in the data) and ``changed`` (of those, events whose
    label was different or missing).

    >>> from stream.events.schema import parse_event
    >>> evs = [parse_event(b'{"event_id":"e%d","ts":1767571200000,"account_id":"a","type":"deposit",'
    ...                    b'"asset":"BTC","amount":1,"usd_value":5,"label":0}' % i) for i in range(3)]
    >>> y = np.zeros(3, dtype=np.int8)
    >>> apply_reviewer_labels(evs, y, {"e1": 1, "e2": 0, "gone": 1}), y.tolist()
    ({'records': 3, 'matched': 2, 'changed': 1}, [0, 1, 0])
    """
    matched = changed = 0
    for i, e in enumerate(events):
        label = labels.get(e.event_id)
        if label is None:
            continue
        if label not in (0, 1):
            raise DataError(f"reviewer label of {e.event_id!r} must be 0 or 1, got {label!r}")
        matched += 1
        if y[i] != label:
            changed += 1
            y[i] = label
    return {"records": len(labels), "matched": matched, "changed": changed}


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

    p = check_file(path)
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
                 seed: int = 0, feature_names: tuple[str, ...] | None = None, labels: Labels = None,
                 progress: bool = False) -> Dataset:
    """Events (no ``label``) or a table (``label`` given); ``labels`` (reviewers' decisions,
    events only): see :func:`event_dataset`."""
    if label is not None:
        if labels is not None:
            raise DataError("--labels needs an events file (reviewer labels name events; a table has none)")
        return table_dataset(path, label, time=time, seed=seed, feature_names=feature_names)
    if time is not None:
        raise DataError("--time applies to tables only (use it with --label)")
    return event_dataset(path, labels=labels, progress=progress)


def dumps_json(obj) -> bytes:
    """Pretty JSON for manifests and reports (numpy scalars allowed)."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_SORT_KEYS)
