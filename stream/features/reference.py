"""The reference feature engine: one pure ``update(state, event)``, the definition of every feature.

Every feature the models see is defined here, and only here. Training and the stream
worker both run the compiled batch engine (:mod:`stream.features.kernel`), which performs
the same arithmetic bit for bit (tests), through the same admission
(:mod:`stream.features.admission`, which applies :func:`admit`'s rules); this module is
the specification and the oracle the tests hold the kernel to. State per account is a fixed set of floats plus small bounded lists (recent
devices, IPs, countries, payout addresses, a top-k counterparty sketch), so its memory does
not grow with the account's event count; it serialises to at most ``MAX_STATE_BYTES``
(about 0.73 KB) of bytes.

Time-decayed aggregates are exponentially decayed counts and sums with time constants of
5 minutes, 1 hour and 24 hours: ``c <- c * exp(-dt / tau) + x``, an event-time analogue
of a sliding-window count that needs one number per horizon.

Out-of-order events: an event older than the account's latest event time is applied at
the account's latest time (``dt = 0``) and flagged with ``late = 1``. The result depends
only on the order events are applied in, so it is deterministic for a given sequence.

>>> from stream.events.schema import Event
>>> s, f = update(None, Event("e1", 1767571200000, "a", "deposit", "BTC", 1.0, 50000.0))
>>> s2, f2 = update(s, Event("e2", 1767571260000, "a", "withdrawal", "BTC", 1.0,
...                          50000.0, counterparty="addr-x"))
>>> round(f2[FEATURE_INDEX["out_balance_ratio"]], 3), f2[FEATURE_INDEX["new_counterparty"]]
(1.0, 1.0)
>>> AccountState.from_bytes(s2.to_bytes()) == s2
True
"""

from __future__ import annotations

import math
import struct
from array import array
from typing import Iterable

import numpy as np

from stream.events.schema import Event
from stream.features.layout import (  # noqa: F401 - FEATURE_INDEX: the module's doctest
    CP_DECAY, EWMA_ALPHA, FEATURE_INDEX, GAP_NONE, LATE_TOLERANCE_MS, MAX_ADDRESSES, MAX_COUNTERPARTIES,
    MAX_COUNTRIES, MAX_DEVICES, MAX_IPS, MAX_RECENT_IDS, N_FEATURES, NEAR_THRESHOLD_FRACTION,
    REPORTING_THRESHOLD_USD, ROUND_TRIP_AMOUNT_TOLERANCE, ROUND_TRIP_WINDOW_S, STATE_HEADER, STATE_LISTS,
    STATE_MAGIC, STATE_SCALARS, TAU_1H, TAU_5M, TAU_24H, TWO_PI_PER_MS_DAY, TYPE_CODE, StateFormatError,
    event_key, late_reason, stable_hash
)

_ONE_HOT = tuple(tuple(1.0 if j == i else 0.0 for j in range(5)) for i in range(5))
_exp = math.exp
_log1p = math.log1p
_log = math.log


_HASHES: dict[str, int] = {}
_HASH_CACHE_MAX = 1 << 16  # ~10 MB at most: devices and IPs repeat, payout addresses often do not


def _h(text: str) -> int:
    """:func:`stable_hash`, memoised."""
    v = _HASHES.get(text)
    if v is None:
        if len(_HASHES) >= _HASH_CACHE_MAX:
            _HASHES.clear()
        v = _HASHES[text] = stable_hash(text)
    return v


class AccountState:
    """Bounded per-account state. Times are epoch ms; ``-1`` means never."""

    last_ts: float       # latest applied event time
    first_ts: float      # first event time (account age)
    n: float             # events applied
    t_dep: float         # time of the last event of each type
    t_wd: float
    t_trade: float
    t_xfer: float
    t_login: float
    c5: float            # decayed event counts, 5 min / 1 h / 24 h
    c1: float
    c24: float
    u5: float            # decayed USD sums
    u1: float
    u24: float
    w5: float            # decayed withdrawal counts
    w1: float
    w24: float
    wu1: float           # decayed withdrawal USD sums
    wu24: float
    tr5: float           # decayed trade counts
    tr1: float
    near24: float        # decayed count of just-under-threshold withdrawals (24 h)
    rt1: float           # decayed count of round-trip trades (1 h)
    nov1: float          # decayed count of events with a new device/IP/country (1 h)
    mu: float            # EWMA of log1p(usd) and its variance
    var: float
    balance: float       # estimated USD balance: deposits minus outflows, floored at 0
    last_dep_usd: float
    t_novel: float       # time of the last event with a new device/IP/country
    last_side: float     # last trade: +1 buy / -1 sell, amount, time, asset hash
    last_amount: float
    last_trade_ts: float
    last_asset: float
    cp_total: float      # decayed total weight of the counterparty sketch
    devices: list[int]   # recency lists of hashes, most recent first, bounded
    ips: list[int]
    countries: list[int]
    addresses: list[int]
    cp_keys: list[int]   # counterparty sketch keys and decayed weights
    cp_weights: list[float]
    recent_ids: list[int]  # 64-bit keys of the latest event ids, most recent first, bounded

    def __init__(self) -> None:
        self.last_ts = self.first_ts = -1.0
        self.n = 0.0
        self.t_dep = self.t_wd = self.t_trade = self.t_xfer = self.t_login = -1.0
        self.c5 = self.c1 = self.c24 = self.u5 = self.u1 = self.u24 = 0.0
        self.w5 = self.w1 = self.w24 = self.wu1 = self.wu24 = self.tr5 = self.tr1 = 0.0
        self.near24 = self.rt1 = self.nov1 = 0.0
        self.mu = self.var = self.balance = self.last_dep_usd = 0.0
        self.t_novel = self.last_trade_ts = -1.0
        self.last_side = self.last_amount = self.last_asset = self.cp_total = 0.0
        self.devices = []
        self.ips = []
        self.countries = []
        self.addresses = []
        self.cp_keys = []
        self.cp_weights = []
        self.recent_ids = []

    def to_bytes(self) -> bytes:
        """Serialise to compact bytes (exact: floats are stored as float64)."""
        lists = [getattr(self, name) for name in STATE_LISTS]
        head = STATE_HEADER.pack(
            STATE_MAGIC, *(getattr(self, n) for n in STATE_SCALARS), *(len(x) for x in lists),
            len(self.recent_ids),
        )
        ints = [v for lst in lists for v in lst]
        return (head + struct.pack(f"<{len(ints)}I", *ints)
                + struct.pack(f"<{len(self.cp_weights)}d", *self.cp_weights)
                + struct.pack(f"<{len(self.recent_ids)}Q", *self.recent_ids))

    @classmethod
    def from_bytes(cls, data: bytes) -> "AccountState":
        """Inverse of :meth:`to_bytes`; raise ``StateFormatError`` on foreign bytes."""
        if len(data) < STATE_HEADER.size:
            raise StateFormatError(f"account state of {len(data)} bytes is too short")
        head = STATE_HEADER.unpack_from(data)
        if head[0] != STATE_MAGIC:
            raise StateFormatError("account state written by another feature engine version")
        st = cls()
        for name, value in zip(STATE_SCALARS, head[1:1 + len(STATE_SCALARS)]):
            setattr(st, name, value)
        lengths = head[1 + len(STATE_SCALARS):-1]
        n_recent = head[-1]
        n_ints = sum(lengths)
        n_cp = lengths[-1]
        if len(data) != STATE_HEADER.size + 4 * n_ints + 8 * n_cp + 8 * n_recent:
            raise StateFormatError("account state has the wrong length")
        ints = struct.unpack_from(f"<{n_ints}I", data, STATE_HEADER.size)
        pos = 0
        for name, k in zip(STATE_LISTS, lengths):
            setattr(st, name, list(ints[pos:pos + k]))
            pos += k
        pos = STATE_HEADER.size + 4 * n_ints
        st.cp_weights = list(struct.unpack_from(f"<{n_cp}d", data, pos))
        st.recent_ids = list(struct.unpack_from(f"<{n_recent}Q", data, pos + 8 * n_cp))
        return st

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AccountState) and all(
            getattr(self, n) == getattr(other, n) for n in STATE_SCALARS + STATE_LISTS + ("cp_weights", "recent_ids")
        )

    def __repr__(self) -> str:
        return f"AccountState(n={self.n:.0f}, last_ts={self.last_ts:.0f})"


def _seen(lst: list[int], text: str, cap: int) -> float:
    """Move ``text``'s hash to the front of the recency list; return 1.0 if it was new."""
    key = _HASHES.get(text)
    if key is None:
        key = _h(text)
    if lst and lst[0] == key:
        return 0.0
    if key in lst:
        lst.remove(key)
        lst.insert(0, key)
        return 0.0
    lst.insert(0, key)
    if len(lst) > cap:
        lst.pop()
    return 1.0


def admit(state: AccountState | None, ev: Event) -> str | None:
    """Why ``ev`` must not be applied to ``state`` (``"duplicate"`` or a lateness reason), or None.

    A duplicate is an event id among the account's last ``MAX_RECENT_IDS`` events; it has
    been applied already. An event more than ``LATE_TOLERANCE_MS`` behind the account's
    latest event is refused rather than applied as if it were current.

    >>> from stream.events.schema import Event
    >>> e = Event("e1", 1767571200000, "a", "deposit", "BTC", 1.0, 5.0)
    >>> s, _ = update(None, e)
    >>> admit(s, e)
    'duplicate'
    >>> admit(s, Event("e0", 1767571200000 - 7_200_000, "a", "deposit", "BTC", 1.0, 5.0))
    'late by 7200s (tolerance 3600s)'
    """
    if state is None:
        return None
    if event_key(ev.event_id) in state.recent_ids:
        return "duplicate"
    behind = state.last_ts - ev.ts
    if behind > LATE_TOLERANCE_MS:
        return late_reason(behind)
    return None


def update(state: AccountState | None, ev: Event) -> tuple[AccountState, list[float]]:
    """Apply one event to an account's state; return the state and the event's features.

    The state is updated in place (and returned; a new one is made for ``None``). The
    features describe the event in the context of everything the account did before it,
    aggregates including the event itself.
    """
    s = AccountState() if state is None else state
    ts = float(ev.ts)
    etype = TYPE_CODE[ev.type]
    usd = ev.usd_value
    first = s.n == 0.0

    # Event time, clamped for late events.
    late = 0.0
    if first:
        s.first_ts = ts
        dt = 0.0
    elif ts < s.last_ts:
        late = 1.0
        ts = s.last_ts
        dt = 0.0
    else:
        dt = (ts - s.last_ts) * 0.001
    t = s.last_ts
    gap_prev = _log1p((ts - t) * 0.001) if t >= 0.0 else GAP_NONE
    if etype == 0:
        t = s.t_dep
    elif etype == 1:
        t = s.t_wd
    elif etype == 2:
        t = s.t_trade
    elif etype == 3:
        t = s.t_xfer
    else:
        t = s.t_login
    gap_same = _log1p((ts - t) * 0.001) if t >= 0.0 else GAP_NONE
    t = s.t_dep
    gap_dep = _log1p((ts - t) * 0.001) if t >= 0.0 else GAP_NONE
    t = s.t_login
    gap_login = _log1p((ts - t) * 0.001) if t >= 0.0 else GAP_NONE

    # Decay every aggregate to the event's time, then add the event.
    if dt > 0.0:
        d5 = _exp(-dt / TAU_5M)
        d1 = _exp(-dt / TAU_1H)
        d24 = _exp(-dt / TAU_24H)
        s.c5 *= d5; s.c1 *= d1; s.c24 *= d24
        s.u5 *= d5; s.u1 *= d1; s.u24 *= d24
        s.w5 *= d5; s.w1 *= d1; s.w24 *= d24
        s.wu1 *= d1; s.wu24 *= d24
        s.tr5 *= d5; s.tr1 *= d1
        s.near24 *= d24; s.rt1 *= d1; s.nov1 *= d1
    s.c5 += 1.0; s.c1 += 1.0; s.c24 += 1.0
    s.u5 += usd; s.u1 += usd; s.u24 += usd
    is_out = etype == 1 or etype == 3
    if etype == 1:
        s.w5 += 1.0; s.w1 += 1.0; s.w24 += 1.0
        s.wu1 += usd; s.wu24 += usd
    elif etype == 2:
        s.tr5 += 1.0; s.tr1 += 1.0

    # Size relative to the account's typical size (EWMA of log usd, logins excluded).
    log_usd = _log1p(usd)
    if etype == 4 or first or s.var == 0.0:
        usd_z = vs_typical = 0.0
    else:
        vs_typical = log_usd - s.mu
        usd_z = vs_typical / math.sqrt(s.var + 0.01)
    if etype != 4:
        if s.var == 0.0:
            s.mu, s.var = log_usd, 1.0
        else:
            diff = log_usd - s.mu
            s.mu += EWMA_ALPHA * diff
            s.var = (1.0 - EWMA_ALPHA) * (s.var + EWMA_ALPHA * diff * diff)

    # Novelty of session context and payout address.
    # Fast path inline: most events repeat the account's most recent device/IP/country.
    new_dev = new_ip = new_cty = 0.0
    text = ev.device_id
    if text:
        lst = s.devices
        if not (lst and lst[0] == _HASHES.get(text)):
            new_dev = _seen(lst, text, MAX_DEVICES)
    text = ev.ip
    if text:
        lst = s.ips
        if not (lst and lst[0] == _HASHES.get(text)):
            new_ip = _seen(lst, text, MAX_IPS)
    text = ev.country
    if text:
        lst = s.countries
        if not (lst and lst[0] == _HASHES.get(text)):
            new_cty = _seen(lst, text, MAX_COUNTRIES)
    if first:
        new_dev = new_ip = new_cty = 0.0  # everything is new on an account's first event
    if new_dev or new_ip or new_cty:
        s.t_novel = ts
        s.nov1 += 1.0
    t = s.t_novel
    gap_novel = _log1p((ts - t) * 0.001) if t >= 0.0 else GAP_NONE
    cp = ev.counterparty
    new_cp = 0.0
    if is_out and cp:
        new_cp = _seen(s.addresses, cp, MAX_ADDRESSES)

    # Flows: balance estimate, payout share, deposit -> withdrawal turnaround.
    out_ratio = wd_vs_dep = near = 0.0
    if etype == 0:
        s.balance += usd
        s.last_dep_usd = usd
    elif is_out:
        out_ratio = min(usd / max(s.balance, 1.0), 100.0)
        s.balance = max(s.balance - usd, 0.0)
        if etype == 1:
            wd_vs_dep = min(usd / max(s.last_dep_usd, 1.0), 100.0)
            if NEAR_THRESHOLD_FRACTION * REPORTING_THRESHOLD_USD <= usd < REPORTING_THRESHOLD_USD:
                near = 1.0
                s.near24 += 1.0

    # Counterparty concentration: decayed space-saving top-k sketch.
    cp_share = cp_top = 0.0
    if cp and (etype == 2 or etype == 3):
        key = _h(cp)
        keys, weights = s.cp_keys, s.cp_weights
        for i in range(len(weights)):
            weights[i] *= CP_DECAY
        s.cp_total = s.cp_total * CP_DECAY + 1.0
        if key in keys:
            weights[keys.index(key)] += 1.0
        elif len(keys) < MAX_COUNTERPARTIES:
            keys.append(key)
            weights.append(1.0)
        else:
            i = weights.index(min(weights))
            keys[i] = key
            weights[i] += 1.0
        top = max(weights)
        cp_share = top / s.cp_total
        cp_top = 1.0 if weights[keys.index(key)] == top else 0.0

    # Trade pattern: execution price against the mark, and round trips.
    price_dev = round_trip = 0.0
    if etype == 2:
        price, amount = ev.price, ev.amount
        if price and amount and usd > 0.0:
            price_dev = min(abs(_log(price * amount / usd)), 5.0)
        side = 1.0 if ev.side == "buy" else -1.0
        asset = float(_h(ev.asset))
        if (s.last_trade_ts >= 0.0 and side == -s.last_side and asset == s.last_asset
                and (ts - s.last_trade_ts) * 0.001 <= ROUND_TRIP_WINDOW_S
                and abs(amount - s.last_amount)
                <= ROUND_TRIP_AMOUNT_TOLERANCE * max(amount, s.last_amount)):
            round_trip = 1.0
            s.rt1 += 1.0
        s.last_side, s.last_amount, s.last_trade_ts, s.last_asset = side, amount, ts, asset

    # Bookkeeping.
    if etype == 0:
        s.t_dep = ts
    elif etype == 1:
        s.t_wd = ts
    elif etype == 2:
        s.t_trade = ts
    elif etype == 3:
        s.t_xfer = ts
    else:
        s.t_login = ts
    s.n += 1.0
    s.last_ts = ts
    recent = s.recent_ids
    recent.insert(0, event_key(ev.event_id))
    if len(recent) > MAX_RECENT_IDS:
        recent.pop()
    angle = (ts % 86_400_000.0) * TWO_PI_PER_MS_DAY
    weekday = (int(ts // 86_400_000.0) + 3) % 7  # 1970-01-01 was a Thursday

    onehot = _ONE_HOT[etype]
    return s, [
        onehot[0], onehot[1], onehot[2], onehot[3], onehot[4],
        log_usd, usd_z, vs_typical,
        math.sin(angle), math.cos(angle), 1.0 if weekday >= 5 else 0.0,
        s.c5, s.c1, s.c24,
        _log1p(s.u5), _log1p(s.u1), _log1p(s.u24),
        s.w5, s.w1, s.w24,
        _log1p(s.wu1), _log1p(s.wu24),
        s.tr5, s.tr1,
        gap_prev, gap_same, gap_dep, gap_login,
        _log1p((ts - s.first_ts) * 0.001), _log1p(s.n),
        new_dev, new_ip, new_cty, new_cp,
        gap_novel, s.nov1, float(len(s.devices)), float(len(s.countries)),
        out_ratio, wd_vs_dep,
        near, s.near24,
        cp_share, cp_top,
        price_dev, round_trip, s.rt1,
        late,
    ]


class FeatureEngine:
    """Holds the states of many accounts and replays event sequences through :func:`update`."""

    def __init__(self) -> None:
        self.states: dict[str, AccountState] = {}

    def process(self, ev: Event) -> list[float]:
        """Apply one event and return its feature row."""
        states = self.states
        st, row = update(states.get(ev.account_id), ev)
        states[ev.account_id] = st
        return row

    def replay(self, events: Iterable[Event]) -> np.ndarray:
        """Apply events in the given order; return their features, one float64 row each.

        Rows go straight into a flat buffer: keeping a Python list per row alive makes
        the garbage collector, not the features, dominate long replays.
        """
        states = self.states
        buf = array("d")
        extend = buf.extend
        for ev in events:
            acct = ev.account_id
            st, row = update(states.get(acct), ev)
            states[acct] = st
            extend(row)
        return np.frombuffer(buf, dtype=np.float64).reshape(-1, N_FEATURES)
