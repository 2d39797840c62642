"""The exchange event contract (schema version 1): parse and validate one event.

Parsing is on the hot path of the stream worker. The definition of a valid event, with a
precise reason for every refusal, is straight-line code over an ``orjson``-decoded dict
(:func:`event_from_dict`); the worker's fast path decodes a whole batch of common-shape
events in one msgspec call (:func:`parse_events`) and hands everything else to it.

>>> e = parse_event(b'{"event_id":"e1","ts":1767571200000,"account_id":"a1",'
...                 b'"type":"deposit","asset":"BTC","amount":0.5,"usd_value":45000}')
>>> (e.type, e.ts, e.usd_value)
('deposit', 1767571200000, 45000.0)
>>> parse_event(b'{"event_id":"e1"}')
Traceback (most recent call last):
...
stream.errors.InvalidEvent: ts: missing required field
"""

from __future__ import annotations

import math
import sys
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Sequence, Union

import msgspec
import orjson

from stream.errors import InvalidEvent

SCHEMA_VERSION = 1
EVENT_TYPES = ("deposit", "withdrawal", "trade", "transfer", "login")
TYPE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}
SIDES = ("buy", "sell")
MAX_EVENT_BYTES = 64 * 1024
MAX_STRING = 256
# Event times outside [2000-01-01, 2100-01-01) are rejected as implausible.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000


_Required = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STRING)]
# An empty optional string is "unset" to the checked parser: the fast path refuses it (min
# length 1) so that the checked parser turns it into None.
_Optional = Union[Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STRING)], None]
_Amount = Annotated[float, msgspec.Meta(ge=0.0, le=sys.float_info.max)]  # finite, not negative


class Event(msgspec.Struct, gc=False):
    """A validated exchange event. ``ts`` is epoch milliseconds (int).

    The field annotations are also the fast path's schema: msgspec decodes and checks the
    common shape of a valid event in C (see :func:`parse_events`). Anything it does not
    accept (ISO-8601 or float times, a trade without side or price, a boolean label, ...)
    is parsed again by :func:`_parse_checked`, which is the definition of validity and
    gives the reasons; ``tests/stream/events/test_fuzz.py`` checks that both agree on every
    payload hypothesis generates. Constructing an ``Event`` directly checks nothing.
    """

    event_id: _Required
    ts: Annotated[int, msgspec.Meta(ge=MIN_TS_MS, lt=MAX_TS_MS)]
    account_id: _Required
    type: Literal["deposit", "withdrawal", "trade", "transfer", "login"]
    asset: _Required
    amount: _Amount
    usd_value: _Amount
    side: Union[Literal["buy", "sell"], None] = None
    price: Union[_Amount, None] = None
    counterparty: _Optional = None
    ip: _Optional = None
    device_id: _Optional = None
    country: _Optional = None
    label: Union[Literal[0, 1], None] = None
    scenario: _Optional = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict, without the fields that are unset."""
        return {k: v for k in self.__struct_fields__ if (v := getattr(self, k)) is not None}


def _string(d: dict, key: str, required: bool) -> str | None:
    v = d.get(key)
    if v is None:
        if required:
            raise InvalidEvent("missing required field", key)
        return None
    if type(v) is not str:
        raise InvalidEvent(f"expected string, got {type(v).__name__}", key)
    if not v:
        if required:
            raise InvalidEvent("empty string", key)
        return None
    if len(v) > MAX_STRING:
        raise InvalidEvent(f"longer than {MAX_STRING} characters", key)
    return v


def _number(d: dict, key: str, required: bool) -> float | None:
    v = d.get(key)
    if v is None:
        if required:
            raise InvalidEvent("missing required field", key)
        return None
    tv = type(v)
    if tv is not float and tv is not int:  # bool is a subclass of int: excluded here
        raise InvalidEvent(f"expected number, got {tv.__name__}", key)
    f = float(v)
    if not math.isfinite(f):
        raise InvalidEvent("not a finite number", key)
    if f < 0.0:
        raise InvalidEvent(f"negative value {f!r}", key)
    return f


def _timestamp(v: Any) -> int:
    if v is None:
        raise InvalidEvent("missing required field", "ts")
    tv = type(v)
    if tv is int:
        ts = v
    elif tv is float:
        if not math.isfinite(v):
            raise InvalidEvent("not a finite number", "ts")
        ts = int(v)
    elif tv is str:
        if len(v) > 64:
            raise InvalidEvent("not an ISO-8601 time", "ts")
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise InvalidEvent(f"not an ISO-8601 time: {v[:40]!r}", "ts") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        ts = int(round(dt.timestamp() * 1000))
    else:
        raise InvalidEvent(f"expected epoch ms or ISO-8601 string, got {tv.__name__}", "ts")
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        raise InvalidEvent(f"epoch ms {ts} outside years 2000-2099", "ts")
    return ts


def event_from_dict(d: Any) -> Event:
    """Validate a decoded JSON value into an :class:`Event`; raise ``InvalidEvent``."""
    if type(d) is not dict:
        raise InvalidEvent(f"expected a JSON object, got {type(d).__name__}")
    event_id = _string(d, "event_id", True)
    ts = _timestamp(d.get("ts"))
    account_id = _string(d, "account_id", True)
    etype = d.get("type")
    if type(etype) is not str or etype not in TYPE_INDEX:  # str first: a list is unhashable
        if etype is None:
            raise InvalidEvent("missing required field", "type")
        raise InvalidEvent(f"unknown event type {str(etype)[:40]!r}", "type")
    asset = _string(d, "asset", True)
    amount = _number(d, "amount", True)
    usd_value = _number(d, "usd_value", True)
    side = price = None
    if etype == "trade":
        side = d.get("side")
        if side not in ("buy", "sell"):
            raise InvalidEvent("trade needs side 'buy' or 'sell'", "side")
        price = _number(d, "price", True)
    label = d.get("label")
    if label is not None and label not in (0, 1):
        raise InvalidEvent("label must be 0 or 1", "label")
    if label is not None:
        label = int(label)
    return Event(
        event_id, ts, account_id, etype, asset, amount, usd_value, side, price,
        _string(d, "counterparty", False), _string(d, "ip", False),
        _string(d, "device_id", False), _string(d, "country", False),
        label, _string(d, "scenario", False),
    )


_decoder = msgspec.json.Decoder(Event)
_decode_one = _decoder.decode
_decode_lines = _decoder.decode_lines
_FAST_ERRORS = (msgspec.ValidationError, msgspec.DecodeError)
_SPAN_MIN = 8  # below this many values a batch is parsed value by value


def _settled(e: Event) -> bool:
    """True if msgspec's event is what the checked parser makes of the same bytes; else
    (a trade without side or price, or a side or price on another type) it must be parsed
    again."""
    trade = e.type == "trade"
    return trade == (e.side is not None) == (e.price is not None)


def parse_event(raw: bytes | bytearray | memoryview | str, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Parse one JSON-encoded event; raise ``InvalidEvent`` with a precise reason.

    Valid events of the common shape take msgspec's compiled decoder;
    everything else, and every refusal, goes through :func:`_parse_checked`.
    """
    if len(raw) > max_bytes:
        raise InvalidEvent(f"payload of {len(raw)} bytes exceeds {max_bytes}")
    try:
        e = _decode_one(raw)
    except _FAST_ERRORS:
        return _parse_checked(raw)
    return e if _settled(e) else _parse_checked(raw)


def parse_events(values: Sequence[bytes], max_bytes: int = MAX_EVENT_BYTES) -> list[Event | InvalidEvent]:
    """Parse a batch of JSON-encoded events: for each value, in order, its :class:`Event`
    or the :class:`InvalidEvent` refusing it -- exactly what :func:`parse_event` gives
    value by value, at a fraction of its cost per event.

    The values are joined by newlines and decoded in one msgspec call. That reading is
    used only when it cannot straddle values: no value contains a newline (so line ``k``
    is value ``k``) and there are as many events as values (so no line was skipped). If a
    span fails (a bad value, a pretty-printed one), it is halved until the spans that
    decode are found; the rest is parsed value by value, with the reasons.
    """
    out: list[Event | InvalidEvent] = [None] * len(values)  # type: ignore[list-item]
    _parse_span(values, 0, len(values), max_bytes, out)
    return out


def _parse_span(values: Sequence[bytes], lo: int, hi: int, max_bytes: int, out: list) -> None:
    n = hi - lo
    if n > _SPAN_MIN:
        span = values[lo:hi]
        blob = b"\n".join(span)
        if blob.count(b"\n") == n - 1 and max(map(len, span)) <= max_bytes:
            try:
                events = _decode_lines(blob)
            except _FAST_ERRORS:
                events = None
            if events is not None and len(events) == n:
                # _settled, inline: a call per event costs more than the test
                for i in [i for i, e in enumerate(events)
                          if not ((e.type == "trade") == (e.side is not None) == (e.price is not None))]:
                    try:
                        events[i] = _parse_checked(span[i])
                    except InvalidEvent as exc:
                        events[i] = exc
                out[lo:hi] = events
                return
        mid = lo + n // 2
        _parse_span(values, lo, mid, max_bytes, out)
        _parse_span(values, mid, hi, max_bytes, out)
        return
    for i in range(lo, hi):
        try:
            out[i] = parse_event(values[i], max_bytes)
        except InvalidEvent as exc:
            out[i] = exc


def _parse_checked(raw: bytes | bytearray | memoryview | str) -> Event:
    """Parse with orjson and validate field by field: the definition, with the reasons."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    return event_from_dict(d)


def dump_event(event: Event) -> bytes:
    """Encode an event as compact JSON bytes (the inverse of :func:`parse_event`)."""
    return orjson.dumps(event.to_dict())


def account_key(value: bytes | None) -> tuple[bytes | None, str | None]:
    """The partition key of an event payload: ``(account_id bytes, None)``, or ``(None,
    reason)`` when the payload has no readable ``account_id`` (nothing else is checked).

    >>> account_key(b'{"account_id": "a1"}'), account_key(b'[1]')
    ((b'a1', None), (None, 'account_id: missing or not a string'))
    """
    if value is None:
        return None, "record has no value"
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc}"
    acct = d.get("account_id") if isinstance(d, dict) else None
    if not isinstance(acct, str) or not acct:
        return None, "account_id: missing or not a string"
    return acct.encode(), None
