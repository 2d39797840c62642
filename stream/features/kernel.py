"""Compiled batch feature engine (numba): :func:`stream.features.reference.update` for many events at once.

The pure-Python engine in :mod:`stream.features.reference` stays the definition of every feature;
this module is a second implementation of the same arithmetic, compiled, over account
states held as rows of two fixed-width matrices instead of :class:`AccountState` objects.
It performs the same float operations in the same order (and calls the same libm
functions), so its feature rows are bit-identical to ``update``'s and its states equal
``update``'s, byte for byte once serialised; ``tests/stream/features/test_kernel.py`` checks
both on simulated histories.

State layout (one row per account, ``row`` indexes both matrices):

``fstate`` float64 ``(n_rows, N_FLOATS)``
    columns ``0..33``: the scalars of :class:`AccountState`, in ``STATE_SCALARS`` order;
    columns ``34..37``: ``cp_weights`` (valid up to the counterparty count).
``istate`` int64 ``(n_rows, N_INTS)``
    columns ``0..5``: lengths of ``devices, ips, countries, addresses, cp_keys,
    recent_ids`` (the order of the serialised header); ``6, 7``: unused;
    then the list slots ``devices 8..15, ips 16..23, countries 24..27, addresses 28..43,
    cp_keys 44..47`` (32-bit hashes, non-negative) and ``recent_ids 48..79`` (the 64-bit
    event keys, stored as the int64 with the same bits). Lists keep ``update``'s order:
    most recent first; slots past a list's length are meaningless.

A fresh row (:func:`fresh_rows`) is ``AccountState()``. ``admit(AccountState(), ev)`` is
always None (no ids, ``last_ts = -1``), so the kernel may run the admission check on every
row: a new account's first event is always applied, as when ``admit`` is skipped for it.

Entry points:

* :func:`update_batch`: admit and apply a batch of pre-encoded events in order, writing
  the features of the applied ones; an event refused as duplicate or late changes nothing.
* :func:`serialize_rows` / :func:`load_row`: rows to and from exactly the bytes of
  ``AccountState.to_bytes`` (the Redis format).
* :func:`to_arrays` / :func:`from_arrays`: rows to and from :class:`AccountState`.
* :class:`BatchFeatureEngine`: the above behind one object: accounts -> rows, ``Event``
  lists (or their :class:`~stream.features.columns.EventColumns`, where the strings are
  hashed) in, feature matrices and admission outcomes out.

Call :func:`ensure_compiled` (``BatchFeatureEngine()`` does) before using the kernels:
it loads them from numba's cache (a first compile takes seconds) and recompiles them
if the cache predates a change of a constant in :mod:`stream.features.layout`.
"""

from __future__ import annotations

import math
from itertools import repeat
from typing import Iterable, Sequence

import numba as nb
import numpy as np
from numba.core.registry import CPUDispatcher

from stream.events.schema import Event
from stream.features.columns import EventColumns, scan_values
from stream.features.layout import (
    CP_DECAY, EWMA_ALPHA, GAP_NONE, LATE_TOLERANCE_MS, MAX_ADDRESSES, MAX_COUNTERPARTIES, MAX_COUNTRIES,
    MAX_DEVICES, MAX_IPS, MAX_RECENT_IDS, N_FEATURES, NEAR_THRESHOLD_FRACTION, REPORTING_THRESHOLD_USD,
    ROUND_TRIP_AMOUNT_TOLERANCE, ROUND_TRIP_WINDOW_S, STATE_HEADER, STATE_LISTS, STATE_MAGIC, STATE_SCALARS,
    TAU_1H, TAU_5M, TAU_24H, TWO_PI_PER_MS_DAY, TYPE_CODE, StateFormatError,
)
from stream.features.reference import AccountState

# -- state layout ---------------------------------------------------------------------

(LAST_TS, FIRST_TS, N, T_DEP, T_WD, T_TRADE, T_XFER, T_LOGIN,
 C5, C1, C24, U5, U1, U24, W5, W1, W24, WU1, WU24, TR5, TR1,
 NEAR24, RT1, NOV1, MU, VAR, BALANCE, LAST_DEP_USD, T_NOVEL,
 LAST_SIDE, LAST_AMOUNT, LAST_TRADE_TS, LAST_ASSET, CP_TOTAL) = range(34)
N_SCALARS = len(STATE_SCALARS)
CP_WEIGHTS = N_SCALARS                      # first cp weight column of fstate
N_FLOATS = N_SCALARS + MAX_COUNTERPARTIES

# Length columns of istate, in the serialised header's order (STATE_LISTS, then recent_ids).
N_DEV, N_IP, N_CTY, N_ADDR, N_CP, N_RECENT = range(6)
DEVICES = 8
IPS = DEVICES + MAX_DEVICES
COUNTRIES = IPS + MAX_IPS
ADDRESSES = COUNTRIES + MAX_COUNTRIES
CP_KEYS = ADDRESSES + MAX_ADDRESSES
RECENT = CP_KEYS + MAX_COUNTERPARTIES
N_INTS = RECENT + MAX_RECENT_IDS
LIST_SLOTS = (DEVICES, IPS, COUNTRIES, ADDRESSES, CP_KEYS)        # STATE_LISTS order
LIST_CAPS = (MAX_DEVICES, MAX_IPS, MAX_COUNTRIES, MAX_ADDRESSES, MAX_COUNTERPARTIES)

# The kernel was written against this state and these type codes: fail loudly, not
# silently wrong, once stream.features.layout changes them.
if (STATE_SCALARS != ("last_ts", "first_ts", "n", "t_dep", "t_wd", "t_trade", "t_xfer", "t_login",
                      "c5", "c1", "c24", "u5", "u1", "u24", "w5", "w1", "w24", "wu1", "wu24", "tr5",
                      "tr1", "near24", "rt1", "nov1", "mu", "var", "balance", "last_dep_usd", "t_novel",
                      "last_side", "last_amount", "last_trade_ts", "last_asset", "cp_total")
        or STATE_LISTS != ("devices", "ips", "countries", "addresses", "cp_keys")
        or TYPE_CODE != {"deposit": 0, "withdrawal": 1, "trade": 2, "transfer": 3, "login": 4}):
    raise ImportError("stream.features.layout changed the account state: update stream.features.kernel")

APPLIED, DUPLICATE, LATE = 0, 1, 2          # admission outcome codes
NEAR_LOW_USD = NEAR_THRESHOLD_FRACTION * REPORTING_THRESHOLD_USD
HEADER_SIZE = STATE_HEADER.size
_MAGIC = STATE_MAGIC
_FRESH = np.array([getattr(AccountState(), name) for name in STATE_SCALARS] + [0.0] * MAX_COUNTERPARTIES)


def fresh_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fstate, istate)`` of ``n`` accounts without history (each ``AccountState()``)."""
    return np.tile(_FRESH, (n, 1)), np.zeros((n, N_INTS), dtype=np.int64)


# -- the kernel ------------------------------------------------------------------------

@nb.njit(cache=True, inline="always")
def _pymax(a, b):
    """Python's ``max(a, b)``: ``a`` unless ``b > a`` (decides between 0.0 and -0.0 alike)."""
    return b if b > a else a


@nb.njit(cache=True, inline="always")
def _pymin(a, b):
    """Python's ``min(a, b)``: ``a`` unless ``b < a``."""
    return b if b < a else a


@nb.njit(cache=True, inline="always")
def _gap(ts, t):
    return math.log1p((ts - t) * 0.001) if t >= 0.0 else GAP_NONE


@nb.njit(cache=True, inline="always")
def _find(s, start, n, key):
    """Index of the first ``key`` in ``s[start:start + n]``, or -1 (``list.index``)."""
    for i in range(n):
        if s[start + i] == key:
            return i
    return -1


@nb.njit(cache=True, inline="always")
def _push_front(s, count, start, cap, key, pos):
    """Put ``key`` first in a recency list: remove it from ``pos`` if there (``pos >= 0``),
    else insert it and drop the last entry beyond ``cap``."""
    n = s[count]
    if pos < 0:
        pos = n if n < cap else cap - 1
        if n < cap:
            s[count] = n + 1
    for i in range(pos, 0, -1):
        s[start + i] = s[start + i - 1]
    s[start] = key


@nb.njit(cache=True, inline="always")
def _seen(s, count, start, cap, key):
    """``stream.features.reference._seen`` on a slot list: move to front, 1.0 if it was new."""
    pos = _find(s, start, s[count], key)
    if pos == 0:
        return 0.0
    _push_front(s, count, start, cap, key, pos)
    return 1.0 if pos < 0 else 0.0


@nb.njit(cache=True)
def _admit(f, s, ts, key):
    """``stream.features.reference.admit`` on a row: APPLIED, DUPLICATE or LATE."""
    if _find(s, RECENT, s[N_RECENT], key) >= 0:
        return DUPLICATE
    if f[LAST_TS] - ts > LATE_TOLERANCE_MS:
        return LATE
    return APPLIED


@nb.njit(cache=True)
def _update(f, s, ts, etype, usd, amount, price, side, key, h_device, h_ip, h_country, h_cp,
            h_asset, o):
    """One event of ``stream.features.reference.update`` on the row ``(f, s)``; features into ``o``.

    Statement for statement the Python function: keep the two in step.
    """
    first = f[N] == 0.0

    # Event time, clamped for late events.
    late = 0.0
    if first:
        f[FIRST_TS] = ts
        dt = 0.0
    elif ts < f[LAST_TS]:
        late = 1.0
        ts = f[LAST_TS]
        dt = 0.0
    else:
        dt = (ts - f[LAST_TS]) * 0.001
    gap_prev = _gap(ts, f[LAST_TS])
    gap_same = _gap(ts, f[T_DEP + etype])
    gap_dep = _gap(ts, f[T_DEP])
    gap_login = _gap(ts, f[T_LOGIN])

    # Decay every aggregate to the event's time, then add the event.
    if dt > 0.0:
        d5 = math.exp(-dt / TAU_5M)
        d1 = math.exp(-dt / TAU_1H)
        d24 = math.exp(-dt / TAU_24H)
        f[C5] *= d5
        f[C1] *= d1
        f[C24] *= d24
        f[U5] *= d5
        f[U1] *= d1
        f[U24] *= d24
        f[W5] *= d5
        f[W1] *= d1
        f[W24] *= d24
        f[WU1] *= d1
        f[WU24] *= d24
        f[TR5] *= d5
        f[TR1] *= d1
        f[NEAR24] *= d24
        f[RT1] *= d1
        f[NOV1] *= d1
    f[C5] += 1.0
    f[C1] += 1.0
    f[C24] += 1.0
    f[U5] += usd
    f[U1] += usd
    f[U24] += usd
    is_out = etype == 1 or etype == 3
    if etype == 1:
        f[W5] += 1.0
        f[W1] += 1.0
        f[W24] += 1.0
        f[WU1] += usd
        f[WU24] += usd
    elif etype == 2:
        f[TR5] += 1.0
        f[TR1] += 1.0

    # Size relative to the account's typical size.
    log_usd = math.log1p(usd)
    if etype == 4 or first or f[VAR] == 0.0:
        usd_z = vs_typical = 0.0
    else:
        vs_typical = log_usd - f[MU]
        usd_z = vs_typical / math.sqrt(f[VAR] + 0.01)
    if etype != 4:
        if f[VAR] == 0.0:
            f[MU] = log_usd
            f[VAR] = 1.0
        else:
            diff = log_usd - f[MU]
            f[MU] += EWMA_ALPHA * diff
            f[VAR] = (1.0 - EWMA_ALPHA) * (f[VAR] + EWMA_ALPHA * diff * diff)

    # Novelty of session context and payout address (hash -1: the field is absent).
    new_dev = new_ip = new_cty = 0.0
    if h_device >= 0:
        new_dev = _seen(s, N_DEV, DEVICES, MAX_DEVICES, h_device)
    if h_ip >= 0:
        new_ip = _seen(s, N_IP, IPS, MAX_IPS, h_ip)
    if h_country >= 0:
        new_cty = _seen(s, N_CTY, COUNTRIES, MAX_COUNTRIES, h_country)
    if first:
        new_dev = new_ip = new_cty = 0.0
    if new_dev != 0.0 or new_ip != 0.0 or new_cty != 0.0:
        f[T_NOVEL] = ts
        f[NOV1] += 1.0
    gap_novel = _gap(ts, f[T_NOVEL])
    new_cp = 0.0
    if is_out and h_cp >= 0:
        new_cp = _seen(s, N_ADDR, ADDRESSES, MAX_ADDRESSES, h_cp)

    # Flows.
    out_ratio = wd_vs_dep = near = 0.0
    if etype == 0:
        f[BALANCE] += usd
        f[LAST_DEP_USD] = usd
    elif is_out:
        out_ratio = _pymin(usd / _pymax(f[BALANCE], 1.0), 100.0)
        f[BALANCE] = _pymax(f[BALANCE] - usd, 0.0)
        if etype == 1:
            wd_vs_dep = _pymin(usd / _pymax(f[LAST_DEP_USD], 1.0), 100.0)
            if NEAR_LOW_USD <= usd < REPORTING_THRESHOLD_USD:
                near = 1.0
                f[NEAR24] += 1.0

    # Counterparty concentration: decayed space-saving top-k sketch.
    cp_share = cp_top = 0.0
    if h_cp >= 0 and (etype == 2 or etype == 3):
        n_cp = s[N_CP]
        for i in range(n_cp):
            f[CP_WEIGHTS + i] *= CP_DECAY
        f[CP_TOTAL] = f[CP_TOTAL] * CP_DECAY + 1.0
        i = _find(s, CP_KEYS, n_cp, h_cp)
        if i >= 0:
            f[CP_WEIGHTS + i] += 1.0
        elif n_cp < MAX_COUNTERPARTIES:
            s[CP_KEYS + n_cp] = h_cp
            f[CP_WEIGHTS + n_cp] = 1.0
            n_cp += 1
            s[N_CP] = n_cp
        else:
            low = f[CP_WEIGHTS]                     # min(weights): first of the minima
            for j in range(1, n_cp):
                if f[CP_WEIGHTS + j] < low:
                    low = f[CP_WEIGHTS + j]
            i = 0                                   # weights.index(low)
            while f[CP_WEIGHTS + i] != low:
                i += 1
            s[CP_KEYS + i] = h_cp
            f[CP_WEIGHTS + i] += 1.0
        top = f[CP_WEIGHTS]                         # max(weights)
        for j in range(1, n_cp):
            if f[CP_WEIGHTS + j] > top:
                top = f[CP_WEIGHTS + j]
        cp_share = top / f[CP_TOTAL]
        cp_top = 1.0 if f[CP_WEIGHTS + _find(s, CP_KEYS, n_cp, h_cp)] == top else 0.0

    # Trade pattern: execution price against the mark, and round trips.
    price_dev = round_trip = 0.0
    if etype == 2:
        if price != 0.0 and amount != 0.0 and usd > 0.0:
            price_dev = _pymin(abs(math.log(price * amount / usd)), 5.0)
        asset = float(h_asset)
        if (f[LAST_TRADE_TS] >= 0.0 and side == -f[LAST_SIDE] and asset == f[LAST_ASSET]
                and (ts - f[LAST_TRADE_TS]) * 0.001 <= ROUND_TRIP_WINDOW_S
                and abs(amount - f[LAST_AMOUNT])
                <= ROUND_TRIP_AMOUNT_TOLERANCE * _pymax(amount, f[LAST_AMOUNT])):
            round_trip = 1.0
            f[RT1] += 1.0
        f[LAST_SIDE] = side
        f[LAST_AMOUNT] = amount
        f[LAST_TRADE_TS] = ts
        f[LAST_ASSET] = asset

    # Bookkeeping.
    f[T_DEP + etype] = ts
    f[N] += 1.0
    f[LAST_TS] = ts
    _push_front(s, N_RECENT, RECENT, MAX_RECENT_IDS, key, -1)
    angle = (ts % 86_400_000.0) * TWO_PI_PER_MS_DAY
    weekday = (int(ts // 86_400_000.0) + 3) % 7

    for j in range(5):
        o[j] = 1.0 if j == etype else 0.0
    o[5] = log_usd
    o[6] = usd_z
    o[7] = vs_typical
    o[8] = math.sin(angle)
    o[9] = math.cos(angle)
    o[10] = 1.0 if weekday >= 5 else 0.0
    o[11] = f[C5]
    o[12] = f[C1]
    o[13] = f[C24]
    o[14] = math.log1p(f[U5])
    o[15] = math.log1p(f[U1])
    o[16] = math.log1p(f[U24])
    o[17] = f[W5]
    o[18] = f[W1]
    o[19] = f[W24]
    o[20] = math.log1p(f[WU1])
    o[21] = math.log1p(f[WU24])
    o[22] = f[TR5]
    o[23] = f[TR1]
    o[24] = gap_prev
    o[25] = gap_same
    o[26] = gap_dep
    o[27] = gap_login
    o[28] = math.log1p((ts - f[FIRST_TS]) * 0.001)
    o[29] = math.log1p(f[N])
    o[30] = new_dev
    o[31] = new_ip
    o[32] = new_cty
    o[33] = new_cp
    o[34] = gap_novel
    o[35] = f[NOV1]
    o[36] = float(s[N_DEV])
    o[37] = float(s[N_CTY])
    o[38] = out_ratio
    o[39] = wd_vs_dep
    o[40] = near
    o[41] = f[NEAR24]
    o[42] = cp_share
    o[43] = cp_top
    o[44] = price_dev
    o[45] = round_trip
    o[46] = f[RT1]
    o[47] = late


@nb.njit(cache=True)
def update_batch(fstate, istate, rows, ts, etype, usd, amount, price, side, ev_key,
                 h_device, h_ip, h_country, h_cp, h_asset, check, outcomes, behind, out):
    """Admit and apply a batch of events in order; return how many were applied.

    Event ``k`` belongs to the account in row ``rows[k]`` (rows may repeat: each event sees
    the state the previous ones left). Per event: ``ts`` epoch ms as float64, ``etype`` the
    ``TYPE_CODE``, ``usd``/``amount`` as given, ``price`` with ``None`` as 0.0, ``side``
    +1.0 for ``"buy"`` else -1.0, ``ev_key`` the ``event_key`` (int64 of the same bits),
    ``h_*`` the ``stable_hash`` of the device, IP, country, counterparty (-1 where the field is
    absent or empty) and asset.

    With ``check``, an event is first admitted as ``stream.features.reference.admit`` would:
    ``outcomes[k]`` is ``APPLIED``, ``DUPLICATE`` or ``LATE`` (``behind[k]`` then holds how
    many ms it is behind the account's latest event) and a refused event changes nothing.
    The features of applied events go to consecutive rows of ``out`` (``(n, N_FEATURES)``).
    """
    n_out = 0
    for k in range(rows.shape[0]):
        f = fstate[rows[k]]
        s = istate[rows[k]]
        t = ts[k]
        key = ev_key[k]
        behind[k] = 0.0
        if check:
            code = _admit(f, s, t, key)
            outcomes[k] = code
            if code != APPLIED:
                if code == LATE:
                    behind[k] = f[LAST_TS] - t
                continue
        else:
            outcomes[k] = APPLIED
        _update(f, s, t, etype[k], usd[k], amount[k], price[k], side[k], key, h_device[k],
                h_ip[k], h_country[k], h_cp[k], h_asset[k], out[n_out])
        n_out += 1
    return n_out


# -- serialisation ---------------------------------------------------------------------

@nb.njit(cache=True, inline="always")
def _put(buf, pos, value, width):
    for j in range(width):
        buf[pos + j] = (value >> (8 * j)) & 0xFF
    return pos + width


@nb.njit(cache=True, inline="always")
def _get(buf, pos, width):
    v = 0
    for j in range(width):
        v |= np.int64(buf[pos + j]) << (8 * j)
    return v


@nb.njit(cache=True)
def state_size(s):
    """Bytes of a row's ``AccountState.to_bytes``."""
    n_ints = s[N_DEV] + s[N_IP] + s[N_CTY] + s[N_ADDR] + s[N_CP]
    return HEADER_SIZE + 4 * n_ints + 8 * s[N_CP] + 8 * s[N_RECENT]


@nb.njit(cache=True)
def serialize_rows(fbits, istate, rows):
    """Serialise ``rows`` exactly as ``AccountState.to_bytes``; return ``(buf, offsets)``
    with row ``i``'s bytes at ``buf[offsets[i]:offsets[i + 1]]``.

    ``fbits`` is ``fstate.view(np.int64)``: the doubles' bit patterns.
    """
    offsets = np.empty(rows.shape[0] + 1, dtype=np.int64)
    offsets[0] = 0
    for i in range(rows.shape[0]):
        offsets[i + 1] = offsets[i] + state_size(istate[rows[i]])
    buf = np.empty(offsets[-1], dtype=np.uint8)
    for i in range(rows.shape[0]):
        f = fbits[rows[i]]
        s = istate[rows[i]]
        pos = _put(buf, offsets[i], _MAGIC, 4)
        for j in range(N_SCALARS):
            pos = _put(buf, pos, f[j], 8)
        for j in range(6):
            buf[pos + j] = s[N_DEV + j]
        pos += 6
        for li in range(5):
            for j in range(s[N_DEV + li]):
                pos = _put(buf, pos, s[LIST_SLOTS[li] + j], 4)
        for j in range(s[N_CP]):
            pos = _put(buf, pos, f[CP_WEIGHTS + j], 8)
        for j in range(s[N_RECENT]):
            pos = _put(buf, pos, s[RECENT + j], 8)
    return buf, offsets


@nb.njit(cache=True)
def load_row(data, fbits, istate, row):
    """Inverse of :func:`serialize_rows` for one row; return 0, or why ``data`` was refused:
    1 too short, 2 another engine version, 3 wrong length, 4 a list beyond its slots.

    ``fbits`` is ``fstate.view(np.int64)``. The row is only written when ``data`` is valid.
    """
    if data.shape[0] < HEADER_SIZE:
        return 1
    if _get(data, 0, 4) != _MAGIC:
        return 2
    pos = 4 + 8 * N_SCALARS
    n_ints = 0
    for li in range(5):
        n_ints += data[pos + li]
    n_cp = data[pos + 4]
    n_recent = data[pos + 5]
    if data.shape[0] != HEADER_SIZE + 4 * n_ints + 8 * n_cp + 8 * n_recent:
        return 3
    for li in range(5):
        if data[pos + li] > LIST_CAPS[li]:
            return 4
    if n_recent > MAX_RECENT_IDS:
        return 4
    f = fbits[row]
    s = istate[row]
    s[:] = 0
    f[CP_WEIGHTS:] = 0
    for j in range(N_SCALARS):
        f[j] = _get(data, 4 + 8 * j, 8)
    for j in range(6):
        s[N_DEV + j] = data[pos + j]
    pos = HEADER_SIZE
    for li in range(5):
        for j in range(s[N_DEV + li]):
            s[LIST_SLOTS[li] + j] = _get(data, pos, 4)
            pos += 4
    for j in range(n_cp):
        f[CP_WEIGHTS + j] = _get(data, pos, 8)
        pos += 8
    for j in range(n_recent):
        s[RECENT + j] = _get(data, pos, 8)
        pos += 8
    return 0


_LOAD_ERRORS = {
    1: "account state is too short",
    2: "account state written by another feature engine version",
    3: "account state has the wrong length",
    4: "account state has more list entries than the compiled engine's slots",
}


# -- AccountState conversions ----------------------------------------------------------

def to_arrays(state: AccountState) -> tuple[np.ndarray, np.ndarray]:
    """One account's ``(fstate row, istate row)``; ``StateFormatError`` if a list is too long."""
    f, s = fresh_rows(1)
    f, s = f[0], s[0]
    f[:N_SCALARS] = [getattr(state, name) for name in STATE_SCALARS]
    lists = [getattr(state, name) for name in STATE_LISTS]
    for li, (lst, start, cap) in enumerate(zip(lists, LIST_SLOTS, LIST_CAPS)):
        if len(lst) > cap:
            raise StateFormatError(f"{STATE_LISTS[li]} has {len(lst)} entries, more than {cap}")
        s[N_DEV + li] = len(lst)
        s[start:start + len(lst)] = lst
    if len(state.cp_weights) != len(state.cp_keys) or len(state.recent_ids) > MAX_RECENT_IDS:
        raise StateFormatError("cp_weights or recent_ids do not fit the compiled layout")
    f[CP_WEIGHTS:CP_WEIGHTS + len(state.cp_weights)] = state.cp_weights
    s[N_RECENT] = len(state.recent_ids)
    s[RECENT:RECENT + len(state.recent_ids)] = np.array(state.recent_ids, dtype=np.uint64).view(np.int64)
    return f, s


def from_arrays(frow: np.ndarray, irow: np.ndarray) -> AccountState:
    """The :class:`AccountState` of one account's rows (Python floats and ints)."""
    st = AccountState()
    for name, value in zip(STATE_SCALARS, frow[:N_SCALARS].tolist()):
        setattr(st, name, value)
    for li, (name, start) in enumerate(zip(STATE_LISTS, LIST_SLOTS)):
        setattr(st, name, irow[start:start + irow[N_DEV + li]].tolist())
    st.cp_weights = frow[CP_WEIGHTS:CP_WEIGHTS + irow[N_CP]].tolist()
    st.recent_ids = irow[RECENT:RECENT + irow[N_RECENT]].view(np.uint64).tolist()
    return st


# -- stale-cache guard -----------------------------------------------------------------

@nb.njit(cache=True)
def _compiled_constants():
    """The constants the kernels were compiled with (see :func:`ensure_compiled`)."""
    return (TAU_5M, TAU_1H, TAU_24H, GAP_NONE, CP_DECAY, EWMA_ALPHA, ROUND_TRIP_WINDOW_S,
            ROUND_TRIP_AMOUNT_TOLERANCE, NEAR_LOW_USD, REPORTING_THRESHOLD_USD,
            TWO_PI_PER_MS_DAY, float(LATE_TOLERANCE_MS), float(MAX_DEVICES), float(MAX_IPS),
            float(MAX_COUNTRIES), float(MAX_ADDRESSES), float(MAX_COUNTERPARTIES),
            float(MAX_RECENT_IDS), float(HEADER_SIZE), float(_MAGIC))


_EXPECTED_CONSTANTS = _compiled_constants.py_func()
_checked = False


def ensure_compiled() -> None:
    """Compile (or load from numba's cache) the kernels and check they are current.

    numba freezes the constants a kernel reads from :mod:`stream.features.layout` into the
    compiled code, and its on-disk cache is keyed on this file only: after a change of a
    constant there, the cached kernels would compute the old features. Compare the
    constants the cache holds with the current ones and recompile everything on a mismatch.
    """
    global _checked
    if _checked:
        return
    if _compiled_constants() != _EXPECTED_CONSTANTS:
        kernels = [v for v in globals().values() if isinstance(v, CPUDispatcher)]
        for kernel in kernels:  # all first: compiling a kernel loads its callees' caches
            kernel._cache.flush()
        for kernel in kernels:
            kernel.recompile()
    engine = BatchFeatureEngine.__new__(BatchFeatureEngine)
    engine._init(2)
    engine.process([Event("warm-up", 1767571200000, "a", "trade", "BTC", 1.0, 1.0, "buy", 1.0,
                          "b", "c", "d", "e")])
    engine.state_bytes(["a"])
    engine.load_bytes("a", engine.state_bytes(["a"])["a"])
    scan_values([b'{"event_id":"warm-up","ts":1767571200000,"account_id":"a","type":"trade","asset":"BTC",'
                 b'"amount":1.5,"usd_value":2e3,"side":"buy","price":1.0,"ip":"c","label":0}'], 1024)
    _checked = True


# -- convenience wrapper ---------------------------------------------------------------

class BatchFeatureEngine:
    """The states of many accounts as matrix rows, updated by :func:`update_batch`.

    ``process(events)`` does what the stream worker does per event with ``admit`` and
    ``update`` (and what ``FeatureEngine.replay`` does without ``admit``) for a whole
    batch; ``state_bytes`` gives the touched accounts' ``AccountState.to_bytes``.

    >>> from stream.events.schema import Event
    >>> eng = BatchFeatureEngine()
    >>> e = Event("e1", 1767571200000, "a", "deposit", "BTC", 1.0, 5.0)
    >>> X, outcomes = eng.process([e, e])
    >>> X.shape, outcomes.tolist()
    ((1, 48), [0, 1])
    """

    def __init__(self, capacity: int = 1024) -> None:
        ensure_compiled()
        self._init(capacity)

    def _init(self, capacity: int) -> None:
        self.rows: dict[str, int] = {}
        self.fstate, self.istate = fresh_rows(max(capacity, 1))

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, account: str) -> bool:
        return account in self.rows

    def unknown(self, accounts: set[str]) -> list[str]:
        """The accounts of ``accounts`` that this engine holds no state for."""
        return list(accounts.difference(self.rows))

    # -- rows ---------------------------------------------------------------------
    def _row(self, account: str) -> int:
        """The account's row, allocating a fresh one (and growing the matrices) if new."""
        row = self.rows.get(account)
        if row is None:
            row = self.rows[account] = len(self.rows)
            if row >= self.fstate.shape[0]:
                f, s = fresh_rows(self.fstate.shape[0])
                self.fstate = np.concatenate([self.fstate, f])
                self.istate = np.concatenate([self.istate, s])
        return row

    def clear(self) -> None:
        """Forget every account (keeps the allocated matrices)."""
        n = len(self.rows)
        self.rows.clear()
        self.fstate[:n], self.istate[:n] = fresh_rows(n)

    # -- states -------------------------------------------------------------------
    def state(self, account: str) -> AccountState | None:
        """The account's state as an :class:`AccountState`, or None if unknown."""
        row = self.rows.get(account)
        return None if row is None else from_arrays(self.fstate[row], self.istate[row])

    def set_state(self, account: str, state: AccountState) -> None:
        """Replace the account's state."""
        f, s = to_arrays(state)
        row = self._row(account)
        self.fstate[row], self.istate[row] = f, s

    def load_bytes(self, account: str, data: bytes) -> None:
        """Set the account's state from ``AccountState.to_bytes`` bytes; ``StateFormatError``
        (and the account unchanged) on bytes this engine cannot hold."""
        new = account not in self.rows
        row = self._row(account)
        code = load_row(np.frombuffer(data, dtype=np.uint8), self.fstate.view(np.int64), self.istate, row)
        if code:
            if new:  # undo the allocation: rows stay dense
                del self.rows[account]
            raise StateFormatError(_LOAD_ERRORS[code])

    def state_bytes(self, accounts: Iterable[str]) -> dict[str, bytes]:
        """``{account: AccountState.to_bytes()}`` of known accounts, serialised in one call."""
        accounts = [a for a in accounts if a in self.rows]
        rows = np.fromiter(map(self.rows.__getitem__, accounts), dtype=np.int64, count=len(accounts))
        buf, offsets = serialize_rows(self.fstate.view(np.int64), self.istate, rows)
        blob = buf.tobytes()
        ends = offsets.tolist()
        return {a: blob[ends[i]:ends[i + 1]] for i, a in enumerate(accounts)}

    # -- events -------------------------------------------------------------------
    def encode(self, events: Sequence[Event] | EventColumns) -> tuple[np.ndarray, ...]:
        """The per-event arrays :func:`update_batch` takes, from ``events`` (``Event`` objects
        or their :class:`~stream.features.columns.EventColumns`): ``(rows, ts, etype, usd,
        amount, price, side, ev_key, h_device, h_ip, h_country, h_cp, h_asset)``.

        Unknown accounts get fresh rows (last, so an event that fails to encode, e.g. of an
        unknown type, leaves the engine as it was).
        """
        cols = events if isinstance(events, EventColumns) else EventColumns.of(events)
        accounts = cols.account_ids
        n = len(accounts)
        rows = np.fromiter(map(self.rows.get, accounts, repeat(-1)), dtype=np.int64, count=n)
        if (rows < 0).any():
            for i in np.flatnonzero(rows < 0).tolist():
                rows[i] = self._row(accounts[i])
        return (rows, *cols.arrays)

    def process(self, events: Sequence[Event] | EventColumns, *, check: bool = True,
                behind: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Apply a batch of events in order; return ``(features, outcomes)``.

        ``features`` has one float64 row per applied event (``N_FEATURES`` columns), in
        order; ``outcomes[k]`` is ``APPLIED``, ``DUPLICATE`` or ``LATE`` for ``events[k]``
        (int8). With ``check=False`` every event is applied, as ``FeatureEngine.replay``
        does. Pass a float64 array of ``len(events)`` as ``behind`` to get, for each late
        event, how many ms it was behind (see :func:`stream.features.layout.late_reason`).
        """
        n = len(events)
        out = np.empty((n, N_FEATURES))
        outcomes = np.empty(n, dtype=np.int8)
        if behind is None:
            behind = np.empty(n)
        if n == 0:
            return out, outcomes
        arrays = self.encode(events)  # first: it may grow the matrices
        k = update_batch(self.fstate, self.istate, *arrays, check, outcomes, behind, out)
        return out[:k], outcomes
