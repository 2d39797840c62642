"""Fidelity samples: the one definition of the scored rows a worker sends for live teacher fidelity.

A worker sends a random share of its scored feature rows (TXWATCH_FIDELITY_SAMPLE_RATE),
with the student's score and the model version, to a Redis stream; ``txwatch fidelity``
scores the same rows with the student's teacher and compares (:mod:`lifecycle.fidelity`).

One stream entry holds the rows one worker sampled since its last send, all of one model
version. Its fields (bytes in Redis):

``v``    the model version that scored the rows
``at``   when the worker sent them, epoch ms
``n``    number of rows
``f``    number of features per row
``ids``  JSON array of the rows' event ids
``s``    the student's scores, ``n`` little-endian float64
``x``    the feature rows, ``n * f`` little-endian float64, row-major (exactly what the student saw)

>>> import numpy as np
>>> s = Sample("m1", 1700000000000, ["e1", "e2"], np.array([0.1, 0.9]), np.arange(6.0).reshape(2, 3))
>>> back = decode_sample(encode_sample(s))
>>> back.model_version, back.ids, back.scores.tolist(), back.rows.shape, back.rows[1].tolist()
('m1', ['e1', 'e2'], [0.1, 0.9], (2, 3), [3.0, 4.0, 5.0])
>>> decode_sample({b"v": b"m1", b"n": b"2"})
Traceback (most recent call last):
...
stream.errors.DataError: fidelity sample: missing field 'at'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import orjson

from stream.errors import DataError

_F64 = np.dtype("<f8")


@dataclass(frozen=True)
class Sample:
    """Scored rows of one model version, as a worker sent them."""

    model_version: str
    at_ms: int
    ids: list[str]
    scores: np.ndarray   # float64 [n]
    rows: np.ndarray     # float64 [n, features]


def encode_sample(s: Sample) -> dict[str, bytes | str | int]:
    """The stream entry's fields of a sample."""
    rows = np.ascontiguousarray(s.rows, dtype=_F64)
    return {"v": s.model_version, "at": int(s.at_ms), "n": len(s.ids), "f": rows.shape[1] if rows.ndim == 2 else 0,
            "ids": orjson.dumps(s.ids), "s": np.ascontiguousarray(s.scores, dtype=_F64).tobytes(),
            "x": rows.tobytes()}


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    v = fields.get(name.encode(), fields.get(name))
    if v is None:
        raise DataError(f"fidelity sample: missing field {name!r}")
    return v


def decode_sample(fields: Mapping[Any, Any]) -> Sample:
    """A sample from its stream entry's fields (bytes or str keys); ``DataError`` saying what
    is wrong when the entry is not a well-formed sample."""
    version = _field(fields, "v")
    version = version.decode() if isinstance(version, bytes) else str(version)
    try:
        at, n, f = int(_field(fields, "at")), int(_field(fields, "n")), int(_field(fields, "f"))
    except ValueError as exc:
        raise DataError(f"fidelity sample: a count is not an integer ({exc})") from None
    try:
        ids = orjson.loads(_field(fields, "ids"))
    except orjson.JSONDecodeError as exc:
        raise DataError(f"fidelity sample: ids are not JSON ({exc})") from None
    scores = np.frombuffer(_field(fields, "s"), dtype=_F64)
    rows = np.frombuffer(_field(fields, "x"), dtype=_F64)
    if not isinstance(ids, list) or len(ids) != n or len(scores) != n or len(rows) != n * f or n < 1 or f < 1:
        raise DataError(f"fidelity sample: sizes disagree (n={n}, features={f}, {len(ids) if isinstance(ids, list) else '?'} "
                        f"ids, {len(scores)} scores, {len(rows)} values)")
    return Sample(version, at, [str(i) for i in ids], scores, rows.reshape(n, f))
