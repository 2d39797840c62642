"""A batch of events as the columns the compiled feature kernel takes.

:class:`EventColumns` holds, per event, the numbers and string hashes
:func:`stream.features.kernel.update_batch` reads (``ts, etype, usd, amount, price, side,
ev_key, h_device, h_ip, h_country, h_cp, h_asset``), the event and account ids as
strings, and a way back to the whole :class:`~stream.events.schema.Event` of a row
(:meth:`EventColumns.event`), which only alerting rows need. It is made two ways:

* :meth:`EventColumns.of` from ``Event`` objects (training's replay; any batch the scan
  below does not take);
* :func:`scan_values` straight from a batch of JSON payloads, in one compiled pass, with no
  Python object per event (:func:`read_values`, the stream's read of a batch, tries it first). It reads only the plain shape of a valid event: a flat JSON
  object of the schema's fields, each at most once, ASCII strings without escapes, plain
  non-negative numbers it can convert exactly, ``ts`` an integer in range, a trade with
  side and price and no other type with either. On any other payload it gives up and the
  caller parses the batch with :func:`stream.events.schema.parse_events`, which is the
  definition of a valid event and gives the reasons for a refusal. What it takes it reads
  as ``parse_event`` does, to the bit: ``tests/stream/features/test_columns.py`` checks
  that on every payload hypothesis generates.

Numbers: a decimal literal is read as an integer mantissa and a power of ten, and
converted only when both are exact in a float64 (mantissa up to 2**53, power within
10**22): one multiplication or division of two exact doubles is correctly rounded, as
msgspec's reading is. Anything longer gives up.
"""

from __future__ import annotations

from typing import Sequence

import numba as nb
import numpy as np
from msgspec.structs import astuple

from stream.errors import InvalidEvent
from stream.events.schema import EVENT_TYPES, MAX_STRING, MAX_TS_MS, MIN_TS_MS, Event, parse_event, parse_events
from stream.features.layout import TYPE_CODE, event_key, stable_hash

# -- string hashes ---------------------------------------------------------------------


def _crc_table() -> np.ndarray:
    table = np.empty(256, dtype=np.int64)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


CRC_TABLE = _crc_table()


@nb.njit(cache=True, inline="always")
def _crc(b, s, e, table):
    """``zlib.crc32`` of the bytes ``b[s:e]`` (``stream.features.layout.stable_hash``)."""
    c = 0xFFFFFFFF
    for j in range(s, e):
        c = table[(c ^ b[j]) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


@nb.njit(cache=True, inline="always")
def _event_key(b, s, e, table):
    """``stream.features.layout.event_key`` of the bytes ``b[s:e]``: ``zlib.crc32`` in the high
    and ``zlib.adler32`` in the low 32 bits, as the int64 of the same bits. Both checksums run
    in one pass; adler32's sums are reduced every 4 KiB, so no length overflows an int64."""
    c = 0xFFFFFFFF
    lo = 1
    hi = 0
    for k in range(s, e, 4096):
        for j in range(k, min(k + 4096, e)):
            x = b[j]
            c = table[(c ^ x) & 0xFF] ^ (c >> 8)
            lo += x
            hi += lo
        lo %= 65521
        hi %= 65521
    return ((c ^ 0xFFFFFFFF) << 32) | (hi << 16) | lo


@nb.njit(cache=True)
def hash_strings(buf, n_keys, n_optional, out, crc_table):
    """Hash the NUL-separated UTF-8 strings of ``buf`` into ``out``; return how many there were.

    The first ``n_keys`` strings get :func:`_event_key`, the rest :func:`_crc`, except that an
    empty string among the last ``n_optional`` gets -1 (absent). A count other than
    ``len(out)`` means a string held a NUL itself (``out`` is then unusable).
    """
    n = out.shape[0]
    first_optional = n - n_optional
    end = buf.shape[0]
    i = 0
    start = 0
    for b in range(end + 1):
        if b < end and buf[b] != 0:
            continue
        if i < n:
            if i < n_keys:
                out[i] = _event_key(buf, start, b, crc_table)
            elif b == start and i >= first_optional:
                out[i] = -1
            else:
                out[i] = _crc(buf, start, b, crc_table)
        i += 1
        start = b + 1
    return i


# -- the columns -----------------------------------------------------------------------

_FIELDS = {name: i for i, name in enumerate(Event.__struct_fields__)}
(_F_ID, _F_TS, _F_ACCOUNT, _F_TYPE, _F_ASSET, _F_AMOUNT, _F_USD, _F_SIDE, _F_PRICE, _F_CP, _F_IP, _F_DEVICE,
 _F_COUNTRY) = (_FIELDS[k] for k in ("event_id", "ts", "account_id", "type", "asset", "amount", "usd_value",
                                     "side", "price", "counterparty", "ip", "device_id", "country"))


class EventColumns:
    """A batch of events as columns (see the module's docstring); ``arrays`` is in
    :func:`~stream.features.kernel.update_batch`'s order, after its ``rows``."""

    __slots__ = ("arrays", "event_ids", "account_ids", "_events", "_values")

    def __init__(self, arrays: tuple[np.ndarray, ...], event_ids: list[str], account_ids: list[str], *,
                 events: Sequence[Event] | None = None, values: Sequence[bytes] | None = None) -> None:
        self.arrays = arrays
        self.event_ids = event_ids
        self.account_ids = account_ids
        self._events = events
        self._values = values

    def __len__(self) -> int:
        return len(self.event_ids)

    def event(self, i: int) -> Event:
        """Row ``i`` as an :class:`Event` (parsed again from its payload when it was scanned)."""
        return self._events[i] if self._events is not None else parse_event(self._values[i])

    def select(self, rows: Sequence[int]) -> EventColumns:
        """The rows ``rows`` (indices, in order) as a batch of their own."""
        idx = np.asarray(rows, dtype=np.int64)
        pick = [self.event_ids[i] for i in rows], [self.account_ids[i] for i in rows]
        kept = self._events if self._events is not None else self._values
        kept = [kept[i] for i in rows]
        return EventColumns(tuple(a[idx] for a in self.arrays), *pick,
                            events=kept if self._events is not None else None,
                            values=kept if self._events is None else None)

    @classmethod
    def of(cls, events: Sequence[Event]) -> EventColumns:
        """The columns of ``events``. Each field is read with one ``map`` or list comprehension
        straight into numpy, and every string is hashed in one compiled call over the joined
        UTF-8 bytes (``event_key`` cannot be memoised: ids are unique). ``KeyError`` on an
        unknown type."""
        n = len(events)
        # One C pass turns the events into field columns (tuples, in Event field order).
        c = list(zip(*map(astuple, events))) if n else [()] * len(_FIELDS)
        ts = np.array(c[_F_TS], dtype=np.float64)
        etype = np.fromiter(map(TYPE_CODE.__getitem__, c[_F_TYPE]), dtype=np.int64, count=n)
        usd = np.array(c[_F_USD], dtype=np.float64)
        amount = np.array(c[_F_AMOUNT], dtype=np.float64)
        price = np.array([p or 0.0 for p in c[_F_PRICE]], dtype=np.float64)
        side = np.where(np.fromiter([s == "buy" for s in c[_F_SIDE]], dtype=np.bool_, count=n), 1.0, -1.0)
        # Every string of the batch, field by field (absent optional ones as ""), hashed
        # in one compiled pass over their NUL-joined UTF-8 bytes (a NUL is never part of
        # another character's UTF-8 encoding).
        texts = [*c[_F_ID], *c[_F_ASSET]]
        for f in (_F_DEVICE, _F_IP, _F_COUNTRY, _F_CP):
            texts += [t or "" for t in c[f]]
        h = np.empty(6 * n, dtype=np.int64)
        buf = np.frombuffer("\x00".join(texts).encode(), dtype=np.uint8)
        if hash_strings(buf, n, 4 * n, h, CRC_TABLE) != 6 * n:  # some string holds a NUL: hash in Python
            h[:n] = np.array(list(map(event_key, texts[:n])), dtype=np.uint64).view(np.int64)
            h[n:] = [stable_hash(t) if t or i < 2 * n else -1 for i, t in enumerate(texts[n:], n)]
        h = h.reshape(6, n)
        return cls((ts, etype, usd, amount, price, side, h[0], h[2], h[3], h[4], h[5], h[1]),
                   list(c[_F_ID]), list(c[_F_ACCOUNT]), events=events)


# -- the compiled scan -----------------------------------------------------------------

# The fields the scan knows, in its own order; a key is found by (length, first byte).
_SCAN_FIELDS = ("event_id", "ts", "account_id", "type", "asset", "amount", "usd_value", "side", "price",
                "counterparty", "ip", "device_id", "country", "label", "scenario")
(S_ID, S_TS, S_ACCOUNT, S_TYPE, S_ASSET, S_AMOUNT, S_USD, S_SIDE, S_PRICE, S_CP, S_IP, S_DEVICE, S_COUNTRY,
 S_LABEL, S_SCENARIO) = range(len(_SCAN_FIELDS))
_REQUIRED = sum(1 << f for f in (S_ID, S_TS, S_ACCOUNT, S_TYPE, S_ASSET, S_AMOUNT, S_USD))
if set(_SCAN_FIELDS) != set(Event.__struct_fields__):
    raise ImportError("the event schema changed its fields: update stream.features.columns")


def _name_table(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(bytes, lengths)``: one row of ASCII bytes per name."""
    width = max(map(len, names))
    table = np.zeros((len(names), width), dtype=np.uint8)
    for i, name in enumerate(names):
        table[i, :len(name)] = np.frombuffer(name.encode(), dtype=np.uint8)
    return table, np.array([len(n) for n in names], dtype=np.int64)


_KEY_NAMES, _KEY_LENS = _name_table(_SCAN_FIELDS)
_KEY_INDEX = np.full(32 * 256, -1, dtype=np.int64)  # (length, first byte) -> field
for _i, _name in enumerate(_SCAN_FIELDS):
    assert _KEY_INDEX[len(_name) * 256 + ord(_name[0])] == -1  # unique: one comparison per key
    _KEY_INDEX[len(_name) * 256 + ord(_name[0])] = _i
_TYPE_NAMES, _TYPE_LENS = _name_table(EVENT_TYPES)
if [TYPE_CODE[t] for t in EVENT_TYPES] != list(range(len(EVENT_TYPES))):
    raise ImportError("type codes are not the schema's order: update stream.features.columns")
_MANT_CAP = 10 ** 16  # a mantissa is multiplied by 10 only below this
_POW10 = np.array([float(10 ** k) for k in range(23)])  # exact doubles
_LIMITS = np.array([MAX_STRING, MIN_TS_MS, MAX_TS_MS, 2 ** 53], dtype=np.int64)


@nb.njit(cache=True, inline="always")
def _skip_ws(b, p, e):
    while p < e and (b[p] == 32 or b[p] == 9 or b[p] == 10 or b[p] == 13):
        p += 1
    return p


@nb.njit(cache=True, inline="always")
def _string_end(b, p, e):
    """``p`` at an opening quote: the index of the closing one, or -1 (an escape, a control
    or non-ASCII byte, or no end)."""
    q = p + 1
    while q < e:
        c = b[q]
        if c == 34:
            return q
        if c == 92 or c < 32 or c >= 128:
            return -1
        q += 1
    return -1


@nb.njit(cache=True, inline="always")
def _matches(b, p, length, names, lens, k):
    if lens[k] != length:
        return False
    for j in range(length):
        if b[p + j] != names[k, j]:
            return False
    return True


@nb.njit(cache=True)
def _number(b, p, e):
    """A non-negative JSON number at ``p``: ``(end, mantissa, exp10, integral)``; ``end`` is
    -1 if there is none (or its significant digits pass 10**17: no int64 overflow)."""
    q = p
    mant = 0
    if q >= e or b[q] < 48 or b[q] > 57:
        return -1, 0, 0, False
    if b[q] == 48:
        q += 1
        if q < e and 48 <= b[q] <= 57:
            return -1, 0, 0, False  # a leading zero: not JSON
    else:
        while q < e and 48 <= b[q] <= 57:
            if mant > _MANT_CAP:
                return -1, 0, 0, False
            mant = mant * 10 + (b[q] - 48)
            q += 1
    exp10 = 0
    integral = True
    if q < e and b[q] == 46:  # '.'
        integral = False
        q += 1
        start = q
        zeros = 0  # trailing zeros held back: "1.50" is 15e-1
        while q < e and 48 <= b[q] <= 57:
            d = b[q] - 48
            q += 1
            if d == 0:
                zeros += 1
                continue
            for _ in range(zeros + 1):
                if mant > _MANT_CAP:
                    return -1, 0, 0, False
                mant *= 10
                exp10 -= 1
            mant += d
            zeros = 0
        if q == start:
            return -1, 0, 0, False
    if q < e and (b[q] == 101 or b[q] == 69):  # 'e', 'E'
        integral = False
        q += 1
        sign = 1
        if q < e and (b[q] == 43 or b[q] == 45):
            sign = -1 if b[q] == 45 else 1
            q += 1
        start = q
        x = 0
        while q < e and 48 <= b[q] <= 57:
            x = x * 10 + (b[q] - 48)
            q += 1
            if q - start > 4:
                return -1, 0, 0, False
        if q == start:
            return -1, 0, 0, False
        exp10 += sign * x
    return q, mant, exp10, integral


@nb.njit(cache=True, inline="always")
def _exact_float(mant, exp10, pow10, max_mant):
    """``mant * 10**exp10`` when one correctly rounded operation gives it; else -1.0."""
    if mant == 0:
        return 0.0
    if mant > max_mant:
        return -1.0
    if exp10 == 0:
        return float(mant)
    if 0 < exp10 <= 22:
        return float(mant) * pow10[exp10]
    if -22 <= exp10 < 0:
        return float(mant) / pow10[-exp10]
    return -1.0


@nb.njit(cache=True)
def scan_lines(b, starts, ends, max_bytes, limits, key_names, key_lens, key_index, type_names, type_lens,
               pow10, crc_table, ts, etype, usd, amount, price, side, ev_key, h_device, h_ip, h_country, h_cp,
               h_asset, spans):
    """Read the payloads ``b[starts[i]:ends[i]]`` into the columns; return how many were read
    before the first one this scan does not take (``len(starts)``: all of them).
    ``spans[i]`` gets the event id's and the account id's ``(start, end)`` in ``b``."""
    max_string, min_ts, max_ts, max_mant = limits[0], limits[1], limits[2], limits[3]
    for i in range(starts.shape[0]):
        p, e = starts[i], ends[i]
        if e - p > max_bytes:
            return i
        p = _skip_ws(b, p, e)
        if p >= e or b[p] != 123:  # '{'
            return i
        p = _skip_ws(b, p + 1, e)
        seen = 0
        price_set = False
        side_set = False
        h_cp[i] = h_ip[i] = h_device[i] = h_country[i] = -1
        price[i] = 0.0
        side[i] = -1.0
        while True:
            if p >= e or b[p] != 34:
                return i
            q = _string_end(b, p, e)
            if q < 0:
                return i
            klen = q - p - 1
            if klen < 1 or klen >= 32:
                return i
            f = key_index[klen * 256 + b[p + 1]]
            if f < 0 or not _matches(b, p + 1, klen, key_names, key_lens, f) or seen & (1 << f):
                return i
            seen |= 1 << f
            p = _skip_ws(b, q + 1, e)
            if p >= e or b[p] != 58:  # ':'
                return i
            p = _skip_ws(b, p + 1, e)
            if p >= e:
                return i
            if b[p] == 110:  # n: null, for an optional field only
                if p + 4 > e or b[p + 1] != 117 or b[p + 2] != 108 or b[p + 3] != 108:
                    return i
                if f <= S_USD:  # the required fields come first in the scan's order
                    return i
                p += 4
            elif b[p] == 34:  # a string
                q = _string_end(b, p, e)
                if q < 0:
                    return i
                s0, s1 = p + 1, q
                if s1 - s0 < 1 or s1 - s0 > max_string:
                    return i
                if f == S_ID:
                    ev_key[i] = _event_key(b, s0, s1, crc_table)
                    spans[i, 0], spans[i, 1] = s0, s1
                elif f == S_ACCOUNT:
                    spans[i, 2], spans[i, 3] = s0, s1
                elif f == S_ASSET:
                    h_asset[i] = _crc(b, s0, s1, crc_table)
                elif f == S_DEVICE:
                    h_device[i] = _crc(b, s0, s1, crc_table)
                elif f == S_IP:
                    h_ip[i] = _crc(b, s0, s1, crc_table)
                elif f == S_COUNTRY:
                    h_country[i] = _crc(b, s0, s1, crc_table)
                elif f == S_CP:
                    h_cp[i] = _crc(b, s0, s1, crc_table)
                elif f == S_TYPE:
                    code = -1
                    for k in range(type_lens.shape[0]):
                        if _matches(b, s0, s1 - s0, type_names, type_lens, k):
                            code = k
                    if code < 0:
                        return i
                    etype[i] = code
                elif f == S_SIDE:
                    if s1 - s0 == 3 and b[s0] == 98 and b[s0 + 1] == 117 and b[s0 + 2] == 121:  # buy
                        side[i] = 1.0
                    elif not (s1 - s0 == 4 and b[s0] == 115 and b[s0 + 1] == 101 and b[s0 + 2] == 108
                              and b[s0 + 3] == 108):  # sell
                        return i
                    side_set = True
                elif f != S_SCENARIO:
                    return i  # a string where a number belongs
                p = q + 1
            else:  # a number
                q, mant, exp10, integral = _number(b, p, e)
                if q < 0:
                    return i
                if f == S_TS:
                    if not integral or mant < min_ts or mant >= max_ts:
                        return i
                    ts[i] = float(mant)
                elif f == S_LABEL:
                    if not integral or q - p != 1 or mant > 1:
                        return i
                elif f == S_AMOUNT or f == S_USD or f == S_PRICE:
                    v = _exact_float(mant, exp10, pow10, max_mant)
                    if v < 0.0:
                        return i
                    if f == S_AMOUNT:
                        amount[i] = v
                    elif f == S_USD:
                        usd[i] = v
                    else:
                        price[i] = v
                        price_set = True
                else:
                    return i  # a number where a string belongs
                p = q
            p = _skip_ws(b, p, e)
            if p >= e:
                return i
            if b[p] == 44:  # ','
                p = _skip_ws(b, p + 1, e)
                continue
            if b[p] != 125:  # '}'
                return i
            p = _skip_ws(b, p + 1, e)
            break
        if p != e or seen & _REQUIRED != _REQUIRED:
            return i
        trade = etype[i] == 2
        if trade != side_set or trade != price_set:
            return i  # the full parser decides (and gives the reason)
    return starts.shape[0]


def scan_values(values: Sequence[bytes], max_bytes: int) -> EventColumns | None:
    """The columns of a batch of JSON payloads read in one compiled pass, or None when some
    payload is not of the plain shape the scan takes (parse the batch with
    :func:`stream.events.schema.parse_events` then)."""
    n = len(values)
    blob = b"".join(values)
    ends = np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=n))
    starts = np.empty(n, dtype=np.int64)
    starts[:1] = 0
    starts[1:] = ends[:-1]
    ts, usd, amount, price, side = (np.empty(n) for _ in range(5))
    etype, ev_key, h_device, h_ip, h_country, h_cp, h_asset = (np.empty(n, dtype=np.int64) for _ in range(7))
    spans = np.empty((n, 4), dtype=np.int64)
    done = scan_lines(np.frombuffer(blob, dtype=np.uint8), starts, ends, max_bytes, _LIMITS, _KEY_NAMES,
                      _KEY_LENS, _KEY_INDEX, _TYPE_NAMES, _TYPE_LENS, _POW10, CRC_TABLE, ts, etype, usd, amount,
                      price, side, ev_key, h_device, h_ip, h_country, h_cp, h_asset, spans)
    if done != n:
        return None
    text = blob.decode("latin-1")  # every byte the scan took is ASCII: offsets are characters
    s = spans.T.tolist()
    return EventColumns((ts, etype, usd, amount, price, side, ev_key, h_device, h_ip, h_country, h_cp, h_asset),
                        list(map(text.__getitem__, map(slice, s[0], s[1]))),
                        list(map(text.__getitem__, map(slice, s[2], s[3]))), values=values)


def read_values(values: Sequence[bytes], max_bytes: int) -> tuple[EventColumns | None, list[tuple[int, InvalidEvent]]]:
    """The stream's read of a batch of JSON payloads: the columns of its valid events (None
    if it has none) and each refused value's index with the refusal. The compiled scan reads
    a batch of plain-shaped events; any other batch is parsed with
    :func:`stream.events.schema.parse_events`, which gives the reasons."""
    batch = scan_values(values, max_bytes) if values else None
    if batch is not None:
        return batch, []
    parsed = parse_events(values, max_bytes)
    refused = [(i, e) for i, e in enumerate(parsed) if type(e) is not Event]
    events = [e for e in parsed if type(e) is Event] if refused else parsed
    return (EventColumns.of(events) if events else None), refused
