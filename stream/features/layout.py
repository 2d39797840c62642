"""The public layout of the feature engine: constants, feature names, the state format.

Both implementations of the features read everything they share from here: the pure
Python engine (:mod:`stream.features.reference`, the specification and test oracle) and
the compiled batch engine (:mod:`stream.features.kernel`). An account's state serialises
to ``STATE_HEADER`` (magic, the ``STATE_SCALARS`` as float64, the lengths of the
``STATE_LISTS`` and of the recent event ids as bytes), then the list entries as uint32,
the counterparty weights as float64 and the recent event keys as uint64, little-endian:
the bytes stored in Redis per account.

>>> len(FEATURE_NAMES) == N_FEATURES, STATE_SCALARS[0], TYPE_CODE["login"]
(True, 'last_ts', 4)
>>> stable_hash("BTC") == zlib.crc32(b"BTC")
True
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib

from stream.errors import TxwatchError
from stream.events.schema import SCHEMA_VERSION

REPORTING_THRESHOLD_USD = 10_000.0
NEAR_THRESHOLD_FRACTION = 0.85
TAU_5M, TAU_1H, TAU_24H = 300.0, 3600.0, 86400.0
# Gap features (log1p of seconds) when there was no earlier event of that kind: ~3 years.
GAP_NONE = math.log1p(1e8)
MAX_DEVICES, MAX_IPS, MAX_COUNTRIES, MAX_ADDRESSES, MAX_COUNTERPARTIES = 8, 8, 4, 16, 4
MAX_RECENT_IDS = 32  # duplicates are recognised among each account's last 32 events
LATE_TOLERANCE_MS = 3_600_000  # later than this behind the account's latest event: refused
CP_DECAY = 0.9  # per counterparty-bearing event: the sketch remembers ~10 recent events
EWMA_ALPHA = 0.1
ROUND_TRIP_WINDOW_S = 3600.0
ROUND_TRIP_AMOUNT_TOLERANCE = 0.05

FEATURE_NAMES: tuple[str, ...] = (
    "is_deposit", "is_withdrawal", "is_trade", "is_transfer", "is_login",
    "log_usd", "usd_z", "log_usd_vs_typical",
    "hour_sin", "hour_cos", "is_weekend",
    "cnt_5m", "cnt_1h", "cnt_24h",
    "log_usd_5m", "log_usd_1h", "log_usd_24h",
    "wd_cnt_5m", "wd_cnt_1h", "wd_cnt_24h",
    "log_wd_usd_1h", "log_wd_usd_24h",
    "trade_cnt_5m", "trade_cnt_1h",
    "log_gap_prev", "log_gap_same_type", "log_gap_deposit", "log_gap_login",
    "log_account_age", "log_n_events",
    "new_device", "new_ip", "new_country", "new_counterparty",
    "log_gap_novelty", "novelty_1h", "n_devices", "n_countries",
    "out_balance_ratio", "wd_vs_last_deposit",
    "near_threshold", "near_threshold_24h",
    "cp_top_share", "cp_is_top",
    "price_vs_mark", "round_trip", "round_trip_1h",
    "late",
)
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
N_FEATURES = len(FEATURE_NAMES)
# Changes whenever the feature list (or the engine's semantics version) changes; a model
# artifact records it and loading refuses a model built for another feature schema.
ENGINE_VERSION = 1
FEATURE_SCHEMA_HASH = hashlib.sha256(
    f"schema={SCHEMA_VERSION};engine={ENGINE_VERSION};".encode() + ",".join(FEATURE_NAMES).encode()
).hexdigest()

TYPE_CODE = {"deposit": 0, "withdrawal": 1, "trade": 2, "transfer": 3, "login": 4}
TWO_PI_PER_MS_DAY = 2.0 * math.pi / 86_400_000.0


def stable_hash(text: str) -> int:
    """The 32-bit hash of a device, IP, country, address or asset in the state (crc32 of
    its UTF-8; Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode())


def event_key(event_id: str) -> int:
    """A 64-bit key of an event id (two independent 32-bit checksums)."""
    b = event_id.encode()
    return (zlib.crc32(b) << 32) | zlib.adler32(b)


def late_reason(behind_ms: float) -> str:
    """Why an event this many ms behind its account's latest event is refused.

    >>> late_reason(7_200_000)
    'late by 7200s (tolerance 3600s)'
    """
    return f"late by {behind_ms / 1000:.0f}s (tolerance {LATE_TOLERANCE_MS // 1000}s)"


class StateFormatError(TxwatchError):
    """Bytes that are not a serialised account state of this engine version."""


# The serialised account state (see the module docstring).
STATE_SCALARS = (
    "last_ts", "first_ts", "n",
    "t_dep", "t_wd", "t_trade", "t_xfer", "t_login",
    "c5", "c1", "c24", "u5", "u1", "u24", "w5", "w1", "w24", "wu1", "wu24", "tr5", "tr1",
    "near24", "rt1", "nov1",
    "mu", "var", "balance", "last_dep_usd", "t_novel",
    "last_side", "last_amount", "last_trade_ts", "last_asset",
    "cp_total",
)
STATE_LISTS = ("devices", "ips", "countries", "addresses", "cp_keys")
STATE_MAGIC = 0x54580000 | ENGINE_VERSION  # "TX" + engine version
STATE_HEADER = struct.Struct(f"<I{len(STATE_SCALARS)}d{len(STATE_LISTS) + 1}B")
MAX_STATE_BYTES = (STATE_HEADER.size + 4 * (MAX_DEVICES + MAX_IPS + MAX_COUNTRIES + MAX_ADDRESSES + MAX_COUNTERPARTIES)
                   + 8 * MAX_COUNTERPARTIES + 8 * MAX_RECENT_IDS)
