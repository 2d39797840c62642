"""Event files: the one reader and writer of JSON Lines and Parquet files of events.

A file of events is JSON Lines (one event object per line; blank lines are skipped) or,
with a ``.parquet`` suffix, Parquet with one column per field of
:class:`stream.events.schema.Event` (nulls for unset fields). Every part of txwatch that
reads or writes such a file goes through here: ``txwatch simulate`` writes them
(:func:`write_events`), training reads and validates them (:func:`read_events`), and
``txwatch replay`` publishes their raw payloads (:func:`iter_payloads`).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "e.jsonl"
>>> write_events(path, [{"event_id": "e1", "ts": 1767571200000, "account_id": "a",
...                      "type": "deposit", "asset": "BTC", "amount": 1.0, "usd_value": 5.0}])
1
>>> [e.event_id for e in read_events(path)], list(iter_payloads(path))[0][0]
(['e1'], 1)
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path

import orjson

from stream.atomic import replacing
from stream.errors import DataError, InvalidEvent
from stream.events.schema import Event, parse_event
from stream.progress import progress_bar

_CHUNK = 65_536
# Parquet column types; every other field of Event is a string.
_PARQUET_TYPES = {"ts": "int64", "amount": "float64", "usd_value": "float64", "price": "float64", "label": "int8"}
PARQUET_FIELDS = tuple((name, _PARQUET_TYPES.get(name, "string")) for name in Event.__struct_fields__)


def is_parquet(path: str | os.PathLike) -> bool:
    """True when ``path`` names a Parquet file (by its suffix)."""
    return Path(path).suffix.lower() == ".parquet"


def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path; ``DataError`` unless it is a non-empty regular file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if not p.is_file():
        raise DataError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty")
    return p


def _parquet_table(p: Path):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(p)
    except Exception as exc:  # pyarrow raises many types for a corrupt file
        raise DataError(f"{p}: not a readable Parquet file ({exc.__class__.__name__}: {exc})") from None


def iter_payloads(path: str | os.PathLike, *, progress: bool = False) -> Iterator[tuple[int, bytes]]:
    """``(number, payload)`` of every event of the file, in file order: the line number and
    the line's bytes (without its line break) of a JSON Lines file, or the row number and
    the row as compact JSON (without its nulls) of a Parquet file. Nothing is validated.

    Raises ``DataError`` for a missing, empty or unreadable file.
    """
    p = check_file(path)
    dumps = orjson.dumps
    if is_parquet(p):
        table = _parquet_table(p)
        with progress_bar(table.num_rows, f"reading {p.name}", enabled=progress) as bar:
            n = 0
            for batch in table.to_batches(max_chunksize=_CHUNK):
                for row in batch.to_pylist():
                    n += 1
                    yield n, dumps({k: v for k, v in row.items() if v is not None})
                bar.update(batch.num_rows)
        return
    with progress_bar(p.stat().st_size, f"reading {p.name}", enabled=progress, unit="B") as bar, \
            open(p, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if n % _CHUNK == 0:
                bar.update(fh.tell() - bar.n)
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield n, line


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


def read_events(path: str | os.PathLike, *, progress: bool = False) -> list[Event]:
    """Every event of the file, validated, in file order.

    Raises ``DataError`` naming the first invalid line or row (and how many there are): a
    truncated or corrupted history must not silently train a model on part of it.
    """
    where = "row" if is_parquet(path) else "line"
    events: list[Event] = []
    errors: list[str] = []
    n_bad = 0
    with _gc_paused():
        for n, payload in iter_payloads(path, progress=progress):
            try:
                events.append(parse_event(payload))
            except InvalidEvent as exc:
                n_bad += 1
                if len(errors) < 3:
                    errors.append(f"{where} {n}: {exc}")
    if n_bad:
        more = f" (and {n_bad - 1} more invalid)" if n_bad > 1 else ""
        raise DataError(f"{path}: {errors[0]}{more}")
    if not events:
        raise DataError(f"{path}: contains no events")
    return events


def read_event_dicts(path: str | os.PathLike) -> Iterator[dict]:
    """The file's events as decoded JSON objects, unvalidated (Parquet nulls left out).

    Raises ``DataError`` for a missing file or a line that is not a JSON object.
    """
    for n, payload in iter_payloads(path):
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON: {exc}") from None
        if type(event) is not dict:
            raise DataError(f"{path}:{n}: expected a JSON object")
        yield event


def write_events(path: str | os.PathLike, events: Iterable[dict], *, progress: bool = False) -> int:
    """Write event dicts to a file atomically; return how many.

    A ``.parquet`` suffix writes Parquet (the schema-1 fields only, ``ts`` as epoch
    milliseconds); any other suffix writes JSON Lines. The data goes to a temporary file in
    the same directory that replaces ``path`` only once complete, so a failure leaves
    ``path`` as it was. Missing parent directories are created.
    """
    path = Path(path)
    total = len(events) if isinstance(events, Sized) else None
    with progress_bar(total, f"write {path.name}", enabled=progress) as bar, replacing(path) as f:
        return (_write_parquet if is_parquet(path) else _write_jsonl)(f, events, bar)


def _write_jsonl(f, events: Iterable[dict], bar) -> int:
    dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    count = 0
    buf: list[bytes] = []
    for event in events:
        buf.append(dumps(event, option=option))
        if len(buf) == _CHUNK:
            f.write(b"".join(buf))
            count += len(buf)
            bar.update(len(buf))
            buf.clear()
    f.write(b"".join(buf))
    bar.update(len(buf))
    return count + len(buf)


def _write_parquet(f, events: Iterable[dict], bar) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.type_for_alias(kind)) for name, kind in PARQUET_FIELDS])
    count = 0
    with pq.ParquetWriter(f, schema, compression="zstd") as writer:
        chunk: list[dict] = []
        for event in events:
            chunk.append(event)
            if len(chunk) == _CHUNK:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                count += len(chunk)
                bar.update(len(chunk))
                chunk = []
        if chunk or not count:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            count += len(chunk)
            bar.update(len(chunk))
    return count
