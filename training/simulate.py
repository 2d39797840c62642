"""Labelled, realistic exchange history: the training data of txwatch.

:func:`simulate` builds a time-ordered list of exchange events (the schema-1 contract in
:mod:`stream.events.schema`) for a population of accounts, and injects labelled fraud
scenarios into it; :func:`deliver` turns that history into the order a stream receives
it, with late and duplicated deliveries (``txwatch simulate`` writes that order by
default; :mod:`stream.events.files` writes and reads the files). Everything is
deterministic per seed: the same arguments give byte-identical files, because every
random draw comes, in a fixed order, from generators seeded by ``seed``.

Market
    Every asset (BTC, ETH, SOL, USDT, XRP, DOGE, ADA) follows a correlated geometric
    Brownian motion sampled per minute; USDT stays at 1.0. ``usd_value`` is always
    ``amount`` times the market price of the event's minute, and an ordinary trade's
    ``price`` is that market price plus or minus a spread below 0.2 %.

Personas (``_PERSONAS``)
    ``retail`` (most accounts; a few sessions of deposits, withdrawals and trades, some
    sign up during the period), ``active_trader`` (many trades), ``market_maker`` (API bots:
    very many small trades, favourite counterparties, round trips, sessions with
    metronomic bursts), ``whale`` (rare, huge amounts) and ``dormant`` (a little activity
    early, a long silence, then a little again, sometimes a cash-out). Each account has a
    typical trade size (lognormal, with a Pareto tail per event), preferred assets, a home
    country (some two) with its time zone, 1-3 devices, 1-4 IP addresses and 1-4
    withdrawal addresses it reuses. Activity is grouped into sessions (a login, then
    events minutes apart) whose start times follow the hour of day in the account's time
    zone and a quieter weekend; market makers run around the clock.

Balances
    Each account's first session is a login and an initial deposit. A rough USD balance
    is tracked per account: a normal withdrawal or outgoing transfer never takes more than
    the balance (an account without funds deposits instead), so outflows follow inflows.

Normal behaviour that looks suspicious (label 0)
    Trips abroad (a login from a new country and IP, sometimes a new device, followed by
    a withdrawal, sometimes of most of the balance), occasional fresh IPs and withdrawal
    addresses, withdrawals just under the reporting threshold, market-maker bursts and
    round trips, dormant accounts that wake up and cash out.

Injected scenarios (label 1 and ``scenario`` set on the anomalous events only; the
account's other events, and the deposits that fund a scheme, stay ``normal``). Their
parameter ranges are the module's ``ATO_*``, ``MULE_*``, ... constants, and times are
drawn log-uniformly, so a bot's seconds are as likely as a patient attacker's hours.
    ``account_takeover``: a login from a new device and a new IP (usually a hosting
    address in another country, sometimes the home country; in 15 % a hijacked session:
    the usual device, a new IP), then 1-4 withdrawals to a never-seen address, the first
    10 s to 6 h after the login, 20 s to 20 min apart, taking 50-100 % of the balance.
    Labelled: that login and the withdrawals.
    ``wash_trading``: a ring of 3-5 accounts trading one asset among themselves for hours
    at a flat price fixed at the ring's start, slightly off the market, while the market
    moves; similar amounts, each member alternating buy and sell.
    ``structuring``: a funding deposit, then 4-20 withdrawals over 12 h to 3 days, each
    85-99.9 % of ``REPORTING_THRESHOLD_USD``, to 1-3 addresses.
    ``mule_turnaround``: 2-5 times, a deposit (500-50k USD) followed 1 min to 8 h later
    by a withdrawal of 80-99 % of it to a fresh address. Labelled: the withdrawals.
    ``velocity_burst``: 20-200 trades or withdrawals at a nearly constant interval of
    0.3-3 s, from the usual or a hosting IP; half of them start 1 s to 10 min after a login
    from that context (a script that signs in, then fires), the rest with no login (an API key).
    ``dormant_reactivation``: a dormant account with no event in the previous 30-60 days
    (or none since the start) logs in and, 30 s to 2 h later, withdraws 40-100 % of its
    balance in 1-2 withdrawals. Labelled: the withdrawals.

Delivery (:func:`deliver`)
    A real exchange's event stream is not in event-time order: producers retry, services
    publish with delays, partitions are rebalanced. A fraction of events (default 1 %)
    arrives late, by a lag drawn lognormally (median 60 s, sigma 2: a few per cent of the
    late ones come more than an hour late, beyond the stream's lateness tolerance), and a
    fraction (default 0.5 %) is delivered twice, the copy 0-120 s after the original (an
    at-least-once producer's retry). The stream's admission recognises a duplicate among
    the account's last 32 events and applies a late event with ``late = 1``, or refuses it
    beyond the tolerance; training replays the same order through the same admission.

Every scenario has at least two instances, spread evenly over the period (the first
starts in its first fifth, the last ends in its last fifth), and more in proportion to
``n_events``; the sizes of wash rings and bursts are capped for small simulations so the
positive rate stays at roughly 0.5-1.5 % (about 0.65 % for large ones).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from stream.errors import ConfigError
from stream.events.schema import EVENT_TYPES, MAX_TS_MS, MIN_TS_MS
from stream.features.layout import REPORTING_THRESHOLD_USD
from stream.progress import progress_bar

__all__ = ["ASSETS", "PERSONAS", "SCENARIOS", "deliver", "simulate"]

DEPOSIT, WITHDRAWAL, TRADE, TRANSFER, LOGIN = (
    EVENT_TYPES.index(t) for t in ("deposit", "withdrawal", "trade", "transfer", "login")
)
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

# name, reference price (USD), annualised volatility, decimals of an amount, popularity
_ASSET_TABLE = (
    ("BTC", 91_000.0, 0.55, 8, 0.30),
    ("ETH", 3_150.0, 0.70, 8, 0.22),
    ("SOL", 135.0, 0.95, 6, 0.12),
    ("USDT", 1.0, 0.0, 2, 0.18),
    ("XRP", 2.05, 0.90, 4, 0.08),
    ("DOGE", 0.145, 1.10, 2, 0.05),
    ("ADA", 0.40, 0.95, 4, 0.05),
)
ASSETS = tuple(row[0] for row in _ASSET_TABLE)
_BTC, _ETH, _SOL, _USDT, _XRP, _DOGE, _ADA = range(len(ASSETS))
_ASSET_DECIMALS = np.array([row[3] for row in _ASSET_TABLE])
_ASSET_POPULARITY = np.array([row[4] for row in _ASSET_TABLE])
_MARKET_CORRELATION = 0.5

# ISO code, UTC offset in hours, share of accounts
_COUNTRY_TABLE = (
    ("US", -5, 0.20), ("CA", -5, 0.03), ("MX", -6, 0.02), ("BR", -3, 0.05),
    ("AR", -3, 0.02), ("GB", 0, 0.07), ("NG", 1, 0.03), ("DE", 1, 0.06),
    ("FR", 1, 0.04), ("NL", 1, 0.02), ("ES", 1, 0.03), ("IT", 1, 0.03),
    ("PL", 1, 0.02), ("ZA", 2, 0.02), ("UA", 2, 0.02), ("TR", 3, 0.05),
    ("AE", 4, 0.02), ("IN", 5, 0.05), ("VN", 7, 0.03), ("ID", 7, 0.03),
    ("TH", 7, 0.02), ("SG", 8, 0.03), ("PH", 8, 0.02), ("KR", 9, 0.06),
    ("JP", 9, 0.05), ("AU", 10, 0.03),
)
_COUNTRIES = tuple(row[0] for row in _COUNTRY_TABLE)
_COUNTRY_TZ = np.array([row[1] for row in _COUNTRY_TABLE])
_COUNTRY_SHARE = np.array([row[2] for row in _COUNTRY_TABLE]) / sum(r[2] for r in _COUNTRY_TABLE)
_US = _COUNTRIES.index("US")

# Relative activity by local hour of day; weekends are quieter.
_HOUR_PROFILE = np.array([
    0.50, 0.35, 0.25, 0.20, 0.20, 0.25, 0.40, 0.60, 0.80, 0.95, 1.00, 1.00,
    1.05, 1.05, 1.00, 1.00, 1.05, 1.10, 1.20, 1.30, 1.35, 1.30, 1.10, 0.80,
])
_WEEKEND_FACTOR = 0.7
_BOT_WEEKEND_FACTOR = 0.85
_BOT_GROUP = 99  # time-zone group of market makers: flat daily profile

# name, share of accounts (retail takes the rest), relative activity, typical USD size,
# event size sigma, mean session length (events), mean gap in a session (s),
# probability of a trip abroad, event type mix (deposit, withdrawal, trade, transfer, login)
_PERSONA_TABLE = (
    ("retail", 0.0, 1.0, 250.0, 0.9, 3.0, 90.0, 0.06, (0.22, 0.14, 0.50, 0.06, 0.08)),
    ("active_trader", 0.10, 8.0, 2_500.0, 0.8, 6.0, 40.0, 0.10, (0.07, 0.06, 0.82, 0.03, 0.02)),
    ("market_maker", 0.01, 100.0, 600.0, 0.5, 40.0, 12.0, 0.0, (0.01, 0.01, 0.97, 0.01, 0.0)),
    ("whale", 0.02, 3.0, 120_000.0, 0.9, 3.0, 120.0, 0.15, (0.22, 0.18, 0.50, 0.07, 0.03)),
    ("dormant", 0.08, 0.15, 400.0, 0.8, 2.5, 120.0, 0.0, (0.30, 0.30, 0.30, 0.05, 0.05)),
)
PERSONAS = tuple(row[0] for row in _PERSONA_TABLE)
_RETAIL, _ACTIVE, _MM, _WHALE, _DORMANT = range(len(PERSONAS))
_P_SHARE = np.array([row[1] for row in _PERSONA_TABLE])
_P_ACTIVITY = np.array([row[2] for row in _PERSONA_TABLE])
_P_TYPICAL = np.array([row[3] for row in _PERSONA_TABLE])
_P_SIGMA = np.array([row[4] for row in _PERSONA_TABLE])
_P_SESSION = np.array([row[5] for row in _PERSONA_TABLE])
_P_GAP_S = np.array([row[6] for row in _PERSONA_TABLE])
_P_TRAVEL = np.array([row[7] for row in _PERSONA_TABLE])
_P_TYPE_CUM = np.cumsum([row[8] for row in _PERSONA_TABLE], axis=1)
_P_TYPE_CUM[:, -1] = 1.0

SCENARIOS = (
    "account_takeover", "wash_trading", "structuring",
    "mule_turnaround", "velocity_burst", "dormant_reactivation",
)
_SCENARIO_NAMES = ("normal",) + SCENARIOS
_ATO, _WASH, _STRUCT, _MULE, _VELOCITY, _DORMANT_RE = range(1, len(_SCENARIO_NAMES))
# The parameter ranges of the injected scenarios: docs/simulator.md says where each comes
# from. Times are drawn log-uniformly inside their range (seconds to hours are equally
# likely per decade), shares and sizes uniformly. The stress variants
# (:mod:`training.stress`) are built outside these ranges on purpose.
ATO_DELAY_S = (10.0, 6 * 3600.0)       # new-device login -> first withdrawal
ATO_WITHDRAWALS = (1, 4)
ATO_GAP_S = (20.0, 1200.0)             # between the withdrawals
ATO_SHARE = (0.5, 1.0)                 # of the balance, all withdrawals together
ATO_HIJACK = 0.15                      # share of takeovers on the usual device (new IP only)
MULE_DELAY_S = (60.0, 8 * 3600.0)      # deposit -> withdrawal
MULE_DEPOSIT_USD = (500.0, 50_000.0)
MULE_SHARE = (0.8, 0.99)               # of the deposit
STRUCT_WITHDRAWALS = (4, 20)
STRUCT_SPAN_H = (12.0, 72.0)
STRUCT_FRACTION = (0.851, 0.999)       # of REPORTING_THRESHOLD_USD
VELOCITY_EVENTS = (20, 200)
VELOCITY_GAP_S = (0.3, 3.0)
VELOCITY_SESSION = 0.5                 # share of bursts that start inside a login session
VELOCITY_LOGIN_S = (1.0, 600.0)        # that session's login -> the burst's first event
DORMANT_SILENCE_DAYS = (30.0, 60.0)
DORMANT_DELAY_S = (30.0, 2 * 3600.0)   # login -> first withdrawal
DORMANT_SHARE = (0.4, 1.0)
# Share of reactivations from a new device and IP, login labelled (a takeover of a dormant
# account). Off: at 0.35 the teacher's validation AUPRC peaked within its first 20 trees
# and training stopped there (docs/models.md); the stress family dormant_takeover_instant
# evaluates this combination instead.
DORMANT_TAKEOVER = 0.0

# Scenario instances per 100,000 events (at least 2 each).
_INSTANCES_PER_100K = {_ATO: 30, _WASH: 3, _STRUCT: 8, _MULE: 15, _VELOCITY: 3, _DORMANT_RE: 15}

# How the balance pass turns a row's ``val`` into the USD amount of an outflow.
_M_NORMAL, _M_FIXED, _M_FRAC = range(3)  # capped at the balance, as is, share of balance
_CP_NONE, _CP_AUTO = -1, -2  # no counterparty; draw one like a normal event
_SPREAD_SIGMA, _SPREAD_MAX = 0.0006, 0.0019
_COLUMNS = (
    ("acct", np.int64), ("ts", np.int64), ("etype", np.int8), ("asset", np.int8),
    ("mode", np.int8), ("val", np.float64), ("alt", np.float64), ("units", np.float64),
    ("side", np.int8), ("price", np.float64), ("cp", np.int64), ("dev", np.int64),
    ("ip", np.int64), ("ctry", np.int64), ("label", np.int8), ("scen", np.int8),
    ("gen", np.bool_),
)
_CHUNK = 65_536


def simulate(
    n_events: int, n_accounts: int, days: float, seed: int, *,
    start_ms: int = 1767571200000, progress: bool = False,
) -> list[dict]:
    """Simulate a labelled exchange history.

    Args:
        n_events: Number of events wanted. The result has a few less (well under 1 %):
            normal events that fall in a dormant-reactivation victim's silence are dropped.
        n_accounts: Number of accounts (about ``n_events / 100`` is realistic).
        days: Length of the period in days (at least 1).
        seed: Non-negative seed; equal arguments give equal events.
        start_ms: Start of the period, epoch milliseconds (default 2026-01-05 00:00 UTC).
        progress: Show a progress bar on stderr.

    Returns:
        Event dicts in the schema-1 format, sorted by ``ts``, with ``label`` and
        ``scenario`` on every event.

    Raises:
        ConfigError: An argument is out of range, or ``n_events`` is too small for
            ``n_accounts`` and the injected scenarios.
    """
    with progress_bar(n_events, "simulate", enabled=progress) as bar:
        return _Simulator(n_events, n_accounts, days, seed, start_ms, bar).run()


class _Strings:
    """An append-only table of strings addressed by index."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, strings: list[str]) -> np.ndarray:
        """Append strings; return their indices."""
        start = len(self.items)
        self.items.extend(strings)
        return np.arange(start, len(self.items))


class _Simulator:
    """One simulation run: accounts, prices, scenario rows, normal rows, then events."""

    def __init__(self, n_events: int, n_accounts: int, days: float, seed: int,
                 start_ms: int, bar: tqdm) -> None:
        if not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if n_accounts < 20:
            raise ConfigError(f"n_accounts must be at least 20, got {n_accounts}")
        if not (isinstance(days, (int, float, np.number)) and days >= 1 and math.isfinite(days)):
            raise ConfigError(f"days must be a number of at least 1, got {days!r}")
        span_ms = int(round(days * DAY_MS))
        if not (isinstance(start_ms, (int, np.integer))
                and MIN_TS_MS <= start_ms and start_ms + span_ms < MAX_TS_MS):
            raise ConfigError(f"period starting at {start_ms} is outside years 2000-2099")
        self.n_events, self.n_accounts, self.seed = int(n_events), int(n_accounts), int(seed)
        self.t0, self.span_ms, self.bar = int(start_ms), span_ms, bar
        self.span_h = span_ms / HOUR_MS
        self.rng = np.random.default_rng(self.seed)
        self.devices, self.ips, self.parties = _Strings(), _Strings(), _Strings()
        self.ip_country: list[int] = []
        self.rows: list[tuple] = []
        self._cdfs: dict[int, np.ndarray] = {}

    def run(self) -> list[dict]:
        """Build the events."""
        self.bar.set_description("simulate: accounts")
        self._make_accounts()
        self._make_prices()
        self.bar.set_description("simulate: scenarios")
        self._make_scenarios()
        self._make_trips()
        n_normal = self.n_events - len(self.rows)
        if n_normal < 2 * self.n_accounts:
            raise ConfigError(
                f"n_events={self.n_events} is too small: {len(self.rows)} go to scenarios and "
                f"each of the {self.n_accounts} accounts needs 2 (about 100 each is realistic)"
            )
        self.bar.set_description("simulate: sessions")
        cols = self._merge(self._normal_events(n_normal), self._row_columns())
        self.bar.set_description("simulate: balances")
        self._apply_balances(cols)
        self._market_maker_round_trips(cols)
        self._counterparties(cols)
        self.bar.set_description("simulate: events")
        return self._to_dicts(cols)

    # ----------------------------------------------------------------- population

    def _make_accounts(self) -> None:
        rng, n = self.rng, self.n_accounts
        counts = np.maximum(np.round(_P_SHARE * n).astype(int), [0, 1, 2, 1, 2])
        counts[_RETAIL] = n - counts[1:].sum()
        persona = np.repeat(np.arange(len(PERSONAS)), counts)
        rng.shuffle(persona)
        self.persona = persona
        self.acct_ids = [f"acct-{i:06d}" for i in range(n)]
        self.parties.add(self.acct_ids)  # party index == account index

        n_c = len(_COUNTRIES)
        prefixes = rng.choice(
            np.concatenate([np.arange(a * 256, a * 256 + 256) for a in range(11, 224)
                            if a not in (100, 127, 169, 172, 192)]),
            size=2 * n_c + 4, replace=False,
        )
        self.ip_prefix = prefixes[: 2 * n_c].reshape(n_c, 2)
        self.hosting_prefix = prefixes[2 * n_c:]

        self.home = rng.choice(n_c, n, p=_COUNTRY_SHARE)
        second = np.where(rng.random(n) < 0.15, (self.home + rng.integers(1, n_c, n)) % n_c, -1)
        self.tz = _COUNTRY_TZ[self.home] - np.where(self.home == _US, rng.integers(0, 4, n), 0)
        self.typical = _P_TYPICAL[persona] * np.exp(rng.normal(0.0, 0.7, n))

        self.n_dev = rng.choice([1, 2, 3], n, p=[0.5, 0.35, 0.15])
        self.dev_start = self._new_devices(int(self.n_dev.sum()))[_starts(self.n_dev)]
        self.n_ip = rng.choice([1, 2, 3, 4], n, p=[0.35, 0.35, 0.2, 0.1])
        ip_ctry = np.repeat(self.home, self.n_ip)
        last = np.cumsum(self.n_ip) - 1
        has_second = (second >= 0) & (self.n_ip > 1)
        ip_ctry[last[has_second]] = second[has_second]
        self.ip_start = self._new_ips(ip_ctry)[_starts(self.n_ip)]
        self.n_addr = rng.choice([1, 2, 3, 4], n, p=[0.4, 0.3, 0.2, 0.1])
        self.addr_start = self._new_addresses(int(self.n_addr.sum()))[_starts(self.n_addr)]

        pref = rng.dirichlet(_ASSET_POPULARITY * 4.0, n)
        self.cum_pref = _cumulative(pref)
        pref[:, _USDT] = 0.0
        self.cum_trade = _cumulative(pref / pref.sum(axis=1, keepdims=True))

        self.join_h = np.where((persona == _RETAIL) & (rng.random(n) < 0.25),
                               rng.uniform(0.0, 0.9, n) * self.span_h, 0.0)
        self.dormant_early_h = rng.uniform(0.02, 0.2, n) * self.span_h
        self.dormant_late_h = rng.uniform(0.5, 0.9, n) * self.span_h
        self.first_session_by_h = np.full(n, self.span_h)
        self.opening = np.zeros(n)
        self.silent_from = np.full(n, np.iinfo(np.int64).max)  # dormant victims' silences
        self.silent_to = np.full(n, np.iinfo(np.int64).min)

        self.mm_accounts = np.flatnonzero(persona == _MM)
        self.mm_row = np.full(n, -1)
        self.mm_row[self.mm_accounts] = np.arange(len(self.mm_accounts))
        partners = np.flatnonzero((persona == _ACTIVE) | (persona == _MM))
        self.mm_fav = np.zeros((len(self.mm_accounts), 30), dtype=np.int64)
        self.mm_fav_n = np.zeros(len(self.mm_accounts), dtype=np.int64)
        for row, mm in enumerate(self.mm_accounts):
            pool = partners[partners != mm]
            k = min(len(pool), int(rng.integers(10, 31)))
            self.mm_fav[row, :k] = rng.choice(pool, k, replace=False)
            self.mm_fav_n[row] = k

        general = np.flatnonzero(np.isin(persona, (_RETAIL, _ACTIVE, _WHALE)))
        self.victims = rng.permutation(general)
        self.victim_next = 0
        self.dormant_victims = rng.permutation(np.flatnonzero(persona == _DORMANT))

    def _make_prices(self) -> None:
        rng = self.rng
        n_min = self.span_ms // MINUTE_MS + 1
        vol = np.array([row[2] for row in _ASSET_TABLE])
        ref = np.array([row[1] for row in _ASSET_TABLE])
        p0 = ref * np.where(vol > 0, np.exp(rng.normal(0.0, 0.05, len(ASSETS))), 1.0)
        dt = 1.0 / (365.0 * 1440.0)
        market = rng.standard_normal(n_min - 1)
        own = rng.standard_normal((len(ASSETS), n_min - 1))
        shocks = math.sqrt(_MARKET_CORRELATION) * market + math.sqrt(1 - _MARKET_CORRELATION) * own
        steps = (-0.5 * vol**2 * dt)[:, None] + (vol * math.sqrt(dt))[:, None] * shocks
        log_path = np.concatenate([np.zeros((len(ASSETS), 1)), np.cumsum(steps, axis=1)], axis=1)
        self.prices = p0[:, None] * np.exp(log_path)

    def _market(self, asset: int, ts: int) -> float:
        return float(self.prices[asset, (ts - self.t0) // MINUTE_MS])

    # ------------------------------------------------------------- string tables

    def _hex(self, prefix: str, k: int) -> list[str]:
        return [f"{prefix}{x:016x}" for x in self.rng.integers(0, 2**63, k).tolist()]

    def _new_devices(self, k: int) -> np.ndarray:
        return self.devices.add(self._hex("dev-", k))

    def _new_addresses(self, k: int) -> np.ndarray:
        return self.parties.add(self._hex("addr-", k))

    def _new_ips(self, countries: Sequence[int] | np.ndarray, hosting: bool = False) -> np.ndarray:
        """New IP addresses located in ``countries`` (hosting ranges if ``hosting``)."""
        rng, k = self.rng, len(countries)
        if hosting:
            prefix = self.hosting_prefix[rng.integers(0, len(self.hosting_prefix), k)]
        else:
            prefix = self.ip_prefix[countries, rng.integers(0, 2, k)]
        c, d = rng.integers(0, 256, k), rng.integers(1, 255, k)
        self.ip_country.extend(np.asarray(countries).tolist())
        return self.ips.add([f"{p >> 8}.{p & 255}.{x}.{y}" for p, x, y in
                             zip(prefix.tolist(), c.tolist(), d.tolist())])

    # ----------------------------------------------------------- account habits

    def _usual_ctx(self, a: int) -> tuple[int, int, int]:
        """A (device, ip, country) of the account's usual ones, primary ones likelier."""
        u1, u2 = self.rng.random(2)
        dev = int(self.dev_start[a] + int(self.n_dev[a] * u1 * u1))
        ip = int(self.ip_start[a] + int(self.n_ip[a] * u2 * u2))
        return dev, ip, self.ip_country[ip]

    def _own_address(self, a: int) -> int:
        return int(self.addr_start[a] + int(self.n_addr[a] * self.rng.random() ** 2))

    def _dest_addresses(self, a: int, k: int, p_fresh: float) -> list[int]:
        return [int(self._new_addresses(1)[0]) if self.rng.random() < p_fresh
                else self._own_address(a) for _ in range(k)]

    def _pref_asset(self, a: int, trade: bool = False) -> int:
        cum = self.cum_trade[a] if trade else self.cum_pref[a]
        return int(np.searchsorted(cum, self.rng.random(), side="right"))

    def _other_country(self, c: int) -> int:
        return int((c + self.rng.integers(1, len(_COUNTRIES))) % len(_COUNTRIES))

    # ------------------------------------------------------------------ scenarios

    def _add(self, acct: int, ts: int, etype: int, asset: int, ctx: tuple[int, int, int], *,
             mode: int = _M_FIXED, val: float = 0.0, units: float = math.nan, side: int = -1,
             price: float = math.nan, cp: int = _CP_NONE, label: int = 0, scen: int = 0) -> None:
        """Append one hand-built row (a scenario or trip event)."""
        self.rows.append((acct, ts, etype, asset, mode, val, 0.5, units, side, price, cp,
                          *ctx, label, scen, False))

    def _count(self, scenario: int) -> int:
        return max(2, round(self.n_events * _INSTANCES_PER_100K[scenario] / 100_000))

    def _positions(self, k: int) -> np.ndarray:
        """Where k instances go in [0, 1]: evenly spread, the first <= 0.2, the last >= 0.8."""
        step = 1.0 / (k - 1)
        jitter = self.rng.uniform(-0.2, 0.2, k) * step
        jitter[0], jitter[-1] = abs(jitter[0]), -abs(jitter[-1])
        return np.clip(np.arange(k) * step + jitter, 0.0, 1.0)

    def _place(self, pos: float, rel_ms: np.ndarray) -> list[int]:
        """Absolute times of an instance whose event offsets are ``rel_ms`` (sorted, from 0)."""
        avail = self.span_ms - 1
        lead = min(6 * HOUR_MS, 0.05 * avail)
        span = float(rel_ms[-1])
        if span > 0.8 * avail:
            rel_ms = rel_ms * (0.8 * avail / span)
            span = float(rel_ms[-1])
        start = lead + pos * (avail - lead - span)
        return (self.t0 + (start + rel_ms).astype(np.int64)).tolist()

    def _victim(self, first_ts: int) -> int:
        """Next account of the general pool (cycling), made to exist and hold funds by first_ts."""
        a = int(self.victims[self.victim_next % len(self.victims)])
        self.victim_next += 1
        self.join_h[a] = 0.0
        by = max((first_ts - self.t0) / HOUR_MS - 1.0, 0.01)
        self.first_session_by_h[a] = min(self.first_session_by_h[a], by)
        return a

    def _loguniform(self, lo: float, hi: float, k: int | None = None):
        return np.exp(self.rng.uniform(math.log(lo), math.log(hi), k))

    def _loguniform_int(self, lo: int, hi: int) -> int:
        return int(min(hi, max(lo, self._loguniform(lo, hi + 1))))

    def _make_scenarios(self) -> None:
        builders = (
            (_ATO, self._account_takeover), (_WASH, self._wash_trading),
            (_STRUCT, self._structuring), (_MULE, self._mule_turnaround),
            (_VELOCITY, self._velocity_burst), (_DORMANT_RE, self._dormant_reactivation),
        )
        for scenario, build in builders:
            k = self._count(scenario)
            if scenario == _DORMANT_RE:
                k = min(k, len(self.dormant_victims))
            for i, pos in enumerate(self._positions(k)):
                build(float(pos), i)

    def _account_takeover(self, pos: float, _: int) -> None:
        rng = self.rng
        n_wd = int(rng.integers(ATO_WITHDRAWALS[0], ATO_WITHDRAWALS[1] + 1))
        first = self._loguniform(*ATO_DELAY_S) * 1000.0
        rel = np.cumsum([0.0, first, *self._loguniform(*ATO_GAP_S, n_wd - 1) * 1000.0])
        ts = self._place(pos, rel)
        a = self._victim(ts[0])
        if rng.random() < ATO_HIJACK:  # a hijacked session: the usual device, a new IP at home
            dev, _, country = self._usual_ctx(a)
            ctx = (dev, int(self._new_ips([country])[0]), country)
        else:
            foreign = rng.random() < 0.75
            country = self._other_country(self.home[a]) if foreign else int(self.home[a])
            ctx = (int(self._new_devices(1)[0]), int(self._new_ips([country], hosting=foreign)[0]),
                   country)
        self._add(a, ts[0], LOGIN, _USDT, ctx, label=1, scen=_ATO)
        share = 1.0 - (1.0 - rng.uniform(*ATO_SHARE)) ** (1.0 / n_wd)
        asset = self._pref_asset(a)
        dests = self._dest_addresses(a, 1 if rng.random() < 0.7 else n_wd, p_fresh=1.0)
        for j, t in enumerate(ts[1:]):
            self._add(a, t, WITHDRAWAL, asset, ctx, mode=_M_FRAC, val=share,
                      cp=dests[j % len(dests)], label=1, scen=_ATO)

    def _wash_trading(self, pos: float, _: int) -> None:
        rng = self.rng
        n = self._loguniform_int(20, int(np.clip(self.n_events / 500, 20, 120)))
        rel = np.sort(rng.uniform(0, rng.uniform(2, 10) * HOUR_MS, n))
        ts = self._place(pos, rel - rel[0])
        ring = [self._victim(ts[0]) for _ in range(int(rng.integers(3, 6)))]
        asset = int(rng.choice([_ETH, _SOL, _XRP, _DOGE, _ADA], p=[0.1, 0.3, 0.2, 0.2, 0.2]))
        p0 = self._market(asset, ts[0])
        flat = round(p0 * (1 + rng.choice([-1, 1]) * rng.uniform(0.003, 0.015)), 6)
        units = rng.uniform(2_000, 30_000) / p0
        sides = rng.integers(0, 2, len(ring)).tolist()
        ctxs = [self._usual_ctx(a) for a in ring]
        m = len(ring)
        for i, t in enumerate(ts):
            j = i % m
            other = ring[(j + int(rng.integers(1, m))) % m]
            self._add(ring[j], t, TRADE, asset, ctxs[j], units=units * rng.uniform(0.98, 1.02),
                      side=sides[j], price=flat, cp=other, label=1, scen=_WASH)
            sides[j] ^= 1

    def _structuring(self, pos: float, _: int) -> None:
        rng = self.rng
        lo, hi = STRUCT_WITHDRAWALS
        n = int(rng.integers(lo, lo + 2) if rng.random() < 0.25 else rng.integers(lo + 2, hi + 1))
        span = rng.uniform(*STRUCT_SPAN_H) * HOUR_MS
        w = np.sort(rng.uniform(0, 1, n))
        w = (w - w[0]) / (w[-1] - w[0]) * span
        rel = np.concatenate([[0.0], rng.uniform(1, 24) * HOUR_MS + w])
        ts = self._place(pos, rel)
        a = self._victim(ts[0])
        usd = rng.uniform(*STRUCT_FRACTION, n) * REPORTING_THRESHOLD_USD
        asset = int(rng.choice([_USDT, _BTC, _ETH], p=[0.6, 0.25, 0.15]))
        dests = self._dest_addresses(a, int(rng.integers(1, 4)), p_fresh=0.6)
        self._add(a, ts[0], DEPOSIT, asset, self._usual_ctx(a),
                  val=float(usd.sum() * rng.uniform(1.0, 1.15)))
        for t, v in zip(ts[1:], usd.tolist()):
            self._add(a, t, WITHDRAWAL, asset, self._usual_ctx(a), val=v,
                      cp=dests[int(rng.integers(len(dests)))], label=1, scen=_STRUCT)

    def _mule_turnaround(self, pos: float, _: int) -> None:
        rng = self.rng
        reps = int(rng.choice([2, 3, 4, 5], p=[0.3, 0.3, 0.25, 0.15]))
        rel, t = [], 0.0
        for r in range(reps):
            t += rng.uniform(3, 48) * HOUR_MS if r else 0.0
            rel.append(t)
            t += self._loguniform(*MULE_DELAY_S) * 1000.0
            rel.append(t)
        ts = self._place(pos, np.array(rel))
        a = self._victim(ts[0])
        asset = int(rng.choice([_USDT, _BTC, _ETH, _SOL], p=[0.6, 0.2, 0.1, 0.1]))
        for r in range(reps):
            ctx = self._usual_ctx(a)
            usd = float(np.clip(rng.lognormal(math.log(4_000), 0.8), *MULE_DEPOSIT_USD))
            self._add(a, ts[2 * r], DEPOSIT, asset, ctx, val=usd)
            self._add(a, ts[2 * r + 1], WITHDRAWAL, asset, ctx, val=usd * rng.uniform(*MULE_SHARE),
                      cp=int(self._new_addresses(1)[0]), label=1, scen=_MULE)

    def _velocity_burst(self, pos: float, _: int) -> None:
        rng = self.rng
        lo, hi = VELOCITY_EVENTS
        n = self._loguniform_int(lo, int(np.clip(self.n_events / 400, lo, hi)))
        jitter = 0.1 if rng.random() < 0.3 else 0.02
        gap = float(self._loguniform(*VELOCITY_GAP_S))
        gaps = np.clip(gap * (1 + rng.normal(0, jitter, n - 1)), *VELOCITY_GAP_S)
        ts = self._place(pos, np.concatenate([[0.0], np.cumsum(gaps) * 1000]))
        a = self._victim(ts[0])
        dev, ip, country = self._usual_ctx(a)
        if rng.random() < 0.5:
            ip = int(self._new_ips([country], hosting=True)[0])
        ctx = (dev, ip, country)
        if rng.random() < VELOCITY_SESSION:  # a bot that signs in first, then fires
            lead_ms = float(self._loguniform(*VELOCITY_LOGIN_S)) * 1000
            self._add(a, int(ts[0] - lead_ms), LOGIN, _USDT, ctx)
        if rng.random() < 0.7:
            asset = self._pref_asset(a, trade=True)
            usd = self.typical[a] * rng.uniform(0.05, 0.5)
            side, alternate = int(rng.integers(0, 2)), rng.random() < 0.5
            for t in ts:
                cp = int(self.mm_accounts[rng.integers(len(self.mm_accounts))])
                self._add(a, t, TRADE, asset, ctx, val=usd * rng.uniform(0.99, 1.01),
                          side=side, cp=cp, label=1, scen=_VELOCITY)
                side ^= alternate
        else:
            share = 1.0 - (1.0 - rng.uniform(0.5, 0.95)) ** (1.0 / n)
            asset = self._pref_asset(a)
            dests = self._dest_addresses(a, int(rng.integers(1, 4)), p_fresh=0.5)
            for t in ts:
                self._add(a, t, WITHDRAWAL, asset, ctx, mode=_M_FRAC, val=share,
                          cp=dests[int(rng.integers(len(dests)))], label=1, scen=_VELOCITY)

    def _dormant_reactivation(self, pos: float, i: int) -> None:
        rng = self.rng
        n_wd = 1 if rng.random() < 0.7 else 2
        rel = np.cumsum([0.0, self._loguniform(*DORMANT_DELAY_S) * 1000.0,
                         *rng.uniform(1, 30, n_wd - 1) * MINUTE_MS])
        ts = self._place(pos, rel)
        a = int(self.dormant_victims[i])
        dev, ip, country = self._usual_ctx(a)
        takeover = rng.random() < DORMANT_TAKEOVER
        if takeover:  # someone else wakes it: a new device, a new IP, often abroad
            foreign = rng.random() < 0.6
            country = self._other_country(self.home[a]) if foreign else country
            dev = int(self._new_devices(1)[0])
            ip = int(self._new_ips([country], hosting=foreign)[0])
        elif rng.random() < 0.6:
            ip = int(self._new_ips([country])[0])
        ctx = (dev, ip, country)
        self._add(a, ts[0], LOGIN, _USDT, ctx, label=int(takeover), scen=_DORMANT_RE if takeover else 0)
        lo, hi = DORMANT_SHARE
        total = rng.uniform(lo, lo + 0.2) if rng.random() < 0.3 else rng.uniform(lo + 0.2, hi)
        share = 1.0 - (1.0 - total) ** (1.0 / n_wd)
        asset = self._pref_asset(a)
        dest = self._dest_addresses(a, 1, p_fresh=0.6)[0]
        for t in ts[1:]:
            self._add(a, t, WITHDRAWAL, asset, ctx, mode=_M_FRAC, val=share, cp=dest,
                      label=1, scen=_DORMANT_RE)
        silent_from = ts[0] - int(rng.uniform(*DORMANT_SILENCE_DAYS) * DAY_MS)
        self.silent_from[a], self.silent_to[a] = silent_from, ts[-1]
        if silent_from <= self.t0:  # its funds predate the period
            self.opening[a] = self.typical[a] * rng.uniform(10, 60)

    def _make_trips(self) -> None:
        """Normal trips abroad: sessions in another country, opened by a login + withdrawal."""
        rng, n = self.rng, self.n_accounts
        travels = np.flatnonzero(rng.random(n) < _P_TRAVEL[self.persona])
        self.trip_start = np.full(n, np.inf)
        self.trip_end = np.full(n, -np.inf)
        self.trip_ip = np.zeros(n, dtype=np.int64)
        self.trip_ctry = np.zeros(n, dtype=np.int64)
        self.trip_dev = np.full(n, -1)
        for a in travels.tolist():
            start_h = self.join_h[a] + rng.uniform(0, 0.9) * (self.span_h - self.join_h[a])
            self.first_session_by_h[a] = min(self.first_session_by_h[a], start_h - 1.0)
            start = start_h * HOUR_MS
            country = self._other_country(self.home[a])
            self.trip_start[a], self.trip_end[a] = start, start + rng.uniform(1, 7) * DAY_MS
            self.trip_ctry[a] = country
            self.trip_ip[a] = self._new_ips([country])[0]
            dev, _, _ = self._usual_ctx(a)
            if rng.random() < 0.2:
                dev = self.trip_dev[a] = int(self._new_devices(1)[0])
            ctx = (dev, int(self.trip_ip[a]), country)
            t = self.t0 + int(start)
            self._add(a, t, LOGIN, _USDT, ctx)
            if rng.random() < 0.8:
                t = min(t + int(rng.uniform(5 * MINUTE_MS, 12 * HOUR_MS)),
                        self.t0 + self.span_ms - 1)
                if rng.random() < 0.15:  # cashing out most of the balance abroad
                    mode, val = _M_FRAC, rng.uniform(0.5, 0.9)
                else:
                    mode, val = _M_NORMAL, self.typical[a] * rng.lognormal(0, 0.9)
                self._add(a, t, WITHDRAWAL, self._pref_asset(a), ctx, mode=mode,
                          val=float(val), cp=_CP_AUTO)

    def _row_columns(self) -> dict[str, np.ndarray]:
        columns = list(zip(*self.rows))
        return {name: np.array(col, dtype=dt) for (name, dt), col in zip(_COLUMNS, columns)}

    # ------------------------------------------------------------ normal events

    def _cdf(self, group: int) -> np.ndarray:
        """Cumulative activity over the period's hours for one time-zone group."""
        if group not in self._cdfs:
            hours = np.arange(math.ceil(self.span_h)) + self.t0 / HOUR_MS + 0.5
            if group == _BOT_GROUP:
                profile, weekend, local = np.ones(24), _BOT_WEEKEND_FACTOR, hours
            else:
                profile, weekend, local = _HOUR_PROFILE, _WEEKEND_FACTOR, hours + group
            local = np.floor(local).astype(np.int64)
            weekday = (local // 24 + 3) % 7  # the epoch was a Thursday; Monday = 0
            w = profile[local % 24] * np.where(weekday >= 5, weekend, 1.0)
            cdf = np.concatenate([[0.0], np.cumsum(w)])
            self._cdfs[group] = cdf / cdf[-1]
        return self._cdfs[group]

    def _sample_hours(self, group: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Hours from the start, in [lo, hi], drawn from each group's daily/weekly rhythm."""
        u = self.rng.random(len(group))
        out = np.empty(len(group))
        for g in np.unique(group).tolist():
            m = group == g
            cdf = self._cdf(g)
            grid = np.arange(len(cdf), dtype=np.float64)
            c_lo, c_hi = np.interp(lo[m], grid, cdf), np.interp(hi[m], grid, cdf)
            out[m] = np.interp(c_lo + u[m] * (c_hi - c_lo), cdf, grid)
        return np.minimum(out, hi)

    def _normal_events(self, n_total: int) -> dict[str, np.ndarray]:
        """Sessions of ordinary activity for every account, ``n_total`` events in all."""
        rng, persona, n = self.rng, self.persona, self.n_accounts
        weight = _P_ACTIVITY[persona] * np.exp(rng.normal(0.0, 0.8, n))
        counts = 2 + rng.multinomial(n_total - 2 * n, weight / weight.sum())
        size = int(counts.sum())
        acct = np.repeat(np.arange(n), counts)
        first = _starts(counts)
        k = np.arange(size) - np.repeat(first, counts)
        pe = persona[acct]

        # Sessions: each account's first is login + initial deposit; then persona-sized.
        new = (k == 0) | ((k >= 2) & (rng.random(size) < 1.0 / _P_SESSION[pe]))
        sess = np.cumsum(new) - 1
        s_first = np.flatnonzero(new)
        s_acct = acct[s_first]
        s_rank = sess[s_first] - sess[first][s_acct]
        lo = self.join_h[s_acct].copy()
        hi = np.full(len(s_first), self.span_h)
        rank0 = s_rank == 0
        hi[rank0] = np.maximum(np.minimum(hi[rank0], self.first_session_by_h[s_acct[rank0]]),
                               lo[rank0])
        dormant = persona[s_acct] == _DORMANT
        hi[dormant & rank0] = self.dormant_early_h[s_acct[dormant & rank0]]
        late = dormant & ~rank0
        lo[late] = self.dormant_late_h[s_acct[late]]
        is_mm = persona[s_acct] == _MM
        group = np.where(is_mm, _BOT_GROUP, self.tz[s_acct])
        start_h = self._sample_hours(group, lo, hi)
        start_ms = start_h[np.lexsort((start_h, s_acct))] * HOUR_MS  # earliest is rank 0

        gap = rng.exponential(_P_GAP_S[pe]) * 1000.0
        algo = is_mm & (rng.random(len(s_first)) < 0.3)  # metronomic bot sessions
        in_algo = algo[sess]
        gap[in_algo] = (rng.uniform(1.0, 5.0, len(s_first))[sess[in_algo]]
                        * 1000.0 * (1 + rng.normal(0, 0.03, int(in_algo.sum()))))
        gap[new] = 0.0
        offset = np.cumsum(gap)
        offset -= offset[s_first][sess]
        s_last = np.append(s_first[1:] - 1, size - 1)
        start_ms = np.maximum(np.minimum(start_ms, self.span_ms - 1 - offset[s_last]), 0.0)
        ts = self.t0 + np.minimum(start_ms[sess] + offset, self.span_ms - 1).astype(np.int64)

        etype = (rng.random(size)[:, None] > _P_TYPE_CUM[pe]).sum(axis=1).astype(np.int8)
        etype[new & ((pe != _MM) | (rng.random(size) < 0.3)) | (k == 0)] = LOGIN
        etype[k == 1] = DEPOSIT
        trade = etype == TRADE
        u = rng.random(size)
        asset = np.where(trade, (u[:, None] > self.cum_trade[acct]).sum(axis=1),
                         (u[:, None] > self.cum_pref[acct]).sum(axis=1))
        asset[etype == LOGIN] = _USDT

        val = self.typical[acct] * np.exp(rng.standard_normal(size) * _P_SIGMA[pe])
        val[trade] *= 0.6
        tail = rng.random(size) < 0.02
        val[tail] *= 1.0 + rng.pareto(1.5, int(tail.sum()))
        val = np.maximum(val, 2.0)
        init = k == 1
        val[init] = self.typical[acct[init]] * rng.uniform(3, 25, int(init.sum()))
        mode = np.full(size, _M_NORMAL, dtype=np.int8)
        wd = etype == WITHDRAWAL
        under = wd & (self.typical[acct] > 1_500) & (rng.random(size) < 0.01)
        val[under] = rng.uniform(0.851, 0.999, int(under.sum())) * REPORTING_THRESHOLD_USD
        cash_out = wd & (pe == _DORMANT) & (rng.random(size) < 0.25)
        mode[cash_out] = _M_FRAC
        val[cash_out] = rng.uniform(0.4, 1.0, int(cash_out.sum()))
        val[etype == LOGIN] = 0.0

        dev, ip, ctry = self._session_context(s_acct, start_ms)
        return {
            "acct": acct, "ts": ts, "etype": etype, "asset": asset, "mode": mode, "val": val,
            "alt": rng.uniform(0.2, 0.9, size), "units": np.full(size, np.nan),
            "side": np.where(trade, rng.integers(0, 2, size), -1),
            "price": np.full(size, np.nan),
            "cp": np.where((etype == DEPOSIT) | (etype == LOGIN), _CP_NONE, _CP_AUTO),
            "dev": dev[sess], "ip": ip[sess], "ctry": ctry[sess],
            "label": np.zeros(size), "scen": np.zeros(size), "gen": np.ones(size, dtype=bool),
        }

    def _session_context(self, s_acct: np.ndarray, start_ms: np.ndarray):
        """Device, IP and country of each session: usual ones, a fresh IP now and then, trips."""
        rng = self.rng
        u1, u2 = rng.random(len(s_acct)), rng.random(len(s_acct))
        dev = self.dev_start[s_acct] + (self.n_dev[s_acct] * u1 * u1).astype(np.int64)
        ip = self.ip_start[s_acct] + (self.n_ip[s_acct] * u2 * u2).astype(np.int64)
        ctry = np.asarray(self.ip_country)[ip]
        fresh = (self.persona[s_acct] != _MM) & (rng.random(len(s_acct)) < 0.02)
        ip[fresh] = self._new_ips(ctry[fresh])
        away = (start_ms >= self.trip_start[s_acct]) & (start_ms < self.trip_end[s_acct])
        ip[away] = self.trip_ip[s_acct[away]]
        ctry[away] = self.trip_ctry[s_acct[away]]
        new_dev = away & (self.trip_dev[s_acct] >= 0)
        dev[new_dev] = self.trip_dev[s_acct[new_dev]]
        return dev, ip, ctry

    def _merge(self, normal: dict, rows: dict) -> dict[str, np.ndarray]:
        """Concatenate, silence dormant victims up to their cash-out, sort by account/time."""
        cols = {name: np.concatenate([normal[name], rows[name]]).astype(dt)
                for name, dt in _COLUMNS}
        acct, ts = cols["acct"], cols["ts"]
        keep = ~(cols["gen"] & (ts >= self.silent_from[acct]) & (ts <= self.silent_to[acct]))
        order = np.lexsort((cols["ts"], cols["acct"]))
        order = order[keep[order]]
        return {name: col[order] for name, col in cols.items()}

    # ---------------------------------------------------------- sequential passes

    def _apply_balances(self, cols: dict) -> None:
        """Turn ``val`` into USD amounts along each account's balance (sets ``usd``).

        An outflow is capped at the balance; a normal one that finds the account nearly
        empty becomes a deposit.
        """
        acct, etype, mode = cols["acct"].tolist(), cols["etype"].tolist(), cols["mode"].tolist()
        usd, alt, opening = cols["val"].tolist(), cols["alt"].tolist(), self.opening.tolist()
        current, balance = -1, 0.0
        for i, a in enumerate(acct):
            if a != current:
                current, balance = a, opening[a]
            t = etype[i]
            if t == DEPOSIT:
                balance += usd[i]
            elif t == WITHDRAWAL or t == TRANSFER:
                m, x = mode[i], usd[i]
                if m == _M_FRAC:
                    x *= balance
                elif m == _M_NORMAL and x > balance:
                    if balance < 20.0:
                        etype[i] = DEPOSIT
                        balance += x
                        continue
                    x = balance * alt[i]
                usd[i] = x
                balance = max(balance - x, 0.0)
        cols["usd"] = np.array(usd)
        cols["etype"] = np.array(etype, dtype=np.int8)
        cols["cp"][(cols["etype"] == DEPOSIT) & (cols["cp"] == _CP_AUTO)] = _CP_NONE

    def _market_maker_round_trips(self, cols: dict) -> None:
        """Most market-maker trades reverse the previous one: same asset and size, other side."""
        rng = self.rng
        idx = np.flatnonzero(cols["gen"] & (cols["etype"] == TRADE)
                             & (self.persona[cols["acct"]] == _MM))
        if len(idx) == 0:
            return
        pos = np.arange(len(idx))
        copy = rng.random(len(idx)) < 0.7
        copy[0] = False
        copy[1:] &= cols["acct"][idx[1:]] == cols["acct"][idx[:-1]]
        src = np.maximum.accumulate(np.where(copy, 0, pos))
        cols["asset"][idx] = cols["asset"][idx[src]]
        cols["usd"][idx] = cols["usd"][idx[src]] * (1 + rng.normal(0, 0.01, len(idx)))
        cols["side"][idx] = cols["side"][idx[src]] ^ ((pos - src) & 1)

    def _counterparties(self, cols: dict) -> None:
        """Counterparties of normal rows: market makers, peers, the account's addresses."""
        rng, n = self.rng, self.n_accounts
        acct, etype, cp = cols["acct"], cols["etype"], cols["cp"]
        auto = cp == _CP_AUTO
        trades = np.flatnonzero(auto & (etype == TRADE))
        by_mm = self.mm_row[acct[trades]] >= 0
        mm_idx, rows = trades[by_mm], self.mm_row[acct[trades[by_mm]]]
        pick = (self.mm_fav_n[rows] * rng.random(len(rows)) ** 2).astype(np.int64)
        cp[mm_idx] = self.mm_fav[rows, pick]
        other = trades[~by_mm]
        cp[other] = np.where(rng.random(len(other)) < 0.75,
                             self.mm_accounts[rng.integers(0, len(self.mm_accounts), len(other))],
                             rng.integers(0, n, len(other)))
        outs = np.flatnonzero(auto & ((etype == WITHDRAWAL) | (etype == TRANSFER)))
        a = acct[outs]
        own = self.addr_start[a] + (self.n_addr[a] * rng.random(len(outs)) ** 2).astype(np.int64)
        peer = rng.integers(0, n, len(outs))
        is_wd = etype[outs] == WITHDRAWAL
        fresh = is_wd & (rng.random(len(outs)) < 0.1)
        to_peer = ~is_wd & (rng.random(len(outs)) < 0.7)
        cp[outs] = np.where(to_peer, peer, own)
        cp[outs[fresh]] = self._new_addresses(int(fresh.sum()))
        self_match = (cp == acct) & auto
        cp[self_match] = (cp[self_match] + 1) % n

    # --------------------------------------------------------------------- output

    def _to_dicts(self, cols: dict) -> list[dict]:
        """Price, round, sort by time and build the event dicts."""
        rng = self.rng
        ts, asset, etype = cols["ts"], cols["asset"].astype(np.int64), cols["etype"]
        market = self.prices[asset, (ts - self.t0) // MINUTE_MS]
        amount = np.where(np.isnan(cols["units"]), cols["usd"] / market, cols["units"])
        amount[etype == LOGIN] = 0.0
        scale = 10.0 ** _ASSET_DECIMALS[asset]
        amount = np.round(amount * scale) / scale
        usd_value = np.round(amount * market, 4)
        spread = np.minimum(np.abs(rng.normal(0, _SPREAD_SIGMA, len(ts))), _SPREAD_MAX)
        sign = np.where(cols["side"] == 1, -1.0, 1.0)
        price = np.where(np.isnan(cols["price"]), np.round(market * (1 + sign * spread), 6),
                         cols["price"])

        order = np.lexsort((np.arange(len(ts)), ts))

        def obj(values, index: np.ndarray) -> list:
            return np.asarray(values, dtype=object)[index[order]].tolist()

        seed, n = self.seed, len(order)
        columns = (
            [f"ev-{seed}-{i:08d}" for i in range(n)], ts[order].tolist(),
            obj(self.acct_ids, cols["acct"]), obj(EVENT_TYPES, etype), obj(ASSETS, asset),
            amount[order].tolist(), usd_value[order].tolist(),
            obj(("buy", "sell", None), cols["side"].astype(np.int64)), price[order].tolist(),
            obj(self.parties.items + [None], cols["cp"]), obj(self.ips.items, cols["ip"]),
            obj(self.devices.items, cols["dev"]), obj(_COUNTRIES, cols["ctry"]),
            cols["label"][order].tolist(), obj(_SCENARIO_NAMES, cols["scen"].astype(np.int64)),
        )
        events: list[dict] = []
        append, update = events.append, self.bar.update
        for i, (eid, t, a, ty, asn, am, uv, sd, pr, cp, ip, dv, ct, lb, sc) in enumerate(
                zip(*columns)):
            if ty == "trade":
                append({"event_id": eid, "ts": t, "account_id": a, "type": ty, "asset": asn,
                        "amount": am, "usd_value": uv, "side": sd, "price": pr,
                        "counterparty": cp, "ip": ip, "device_id": dv, "country": ct,
                        "label": lb, "scenario": sc})
            elif cp is not None:
                append({"event_id": eid, "ts": t, "account_id": a, "type": ty, "asset": asn,
                        "amount": am, "usd_value": uv, "counterparty": cp, "ip": ip,
                        "device_id": dv, "country": ct, "label": lb, "scenario": sc})
            else:
                append({"event_id": eid, "ts": t, "account_id": a, "type": ty, "asset": asn,
                        "amount": am, "usd_value": uv, "ip": ip, "device_id": dv,
                        "country": ct, "label": lb, "scenario": sc})
            if i % _CHUNK == _CHUNK - 1:
                update(_CHUNK)
        self.bar.update(n % _CHUNK)
        return events


DEFAULT_LATE_FRACTION = 0.01
DEFAULT_DUPLICATE_FRACTION = 0.005
LATE_MEDIAN_S, LATE_SIGMA = 60.0, 2.0
DUPLICATE_WITHIN_S = 120.0


def deliver(events: list[dict], seed: int, *, late_fraction: float = DEFAULT_LATE_FRACTION,
            duplicate_fraction: float = DEFAULT_DUPLICATE_FRACTION) -> list[dict]:
    """The order in which a stream receives a time-ordered history: some events late, some twice.

    Each event is late with probability ``late_fraction`` (it arrives a lognormal lag after
    its event time, median ``LATE_MEDIAN_S``, sigma ``LATE_SIGMA``) and delivered a second
    time with probability ``duplicate_fraction`` (the copy, with the same event id, arrives
    up to ``DUPLICATE_WITHIN_S`` after the first delivery). Events are then ordered by
    arrival (ties keep their order). The draws come from their own generator, so the
    history itself does not change with these fractions; both 0 returns ``events`` as is.

    >>> evs = [{"event_id": str(i), "ts": 1767571200000 + 1000 * i} for i in range(1000)]
    >>> out = deliver(evs, 1, late_fraction=0.05, duplicate_fraction=0.01)
    >>> len(out) > len(evs), sorted({e["event_id"] for e in out}) == sorted(e["event_id"] for e in evs)
    (True, True)
    >>> deliver(evs, 1, late_fraction=0.0, duplicate_fraction=0.0) == evs
    True
    """
    for name, value in (("late_fraction", late_fraction), ("duplicate_fraction", duplicate_fraction)):
        if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
            raise ConfigError(f"{name} must be at least 0 and below 1, got {value!r}")
    if late_fraction == 0.0 and duplicate_fraction == 0.0:
        return events
    rng = np.random.default_rng([int(seed), 0x5EED])
    n = len(events)
    arrival = np.array([e["ts"] for e in events], dtype=np.float64)
    late = rng.random(n) < late_fraction
    arrival[late] += rng.lognormal(math.log(LATE_MEDIAN_S * 1000.0), LATE_SIGMA, int(late.sum()))
    twice = np.flatnonzero(rng.random(n) < duplicate_fraction)
    copies = arrival[twice] + rng.uniform(0.0, DUPLICATE_WITHIN_S * 1000.0, len(twice))
    index = np.concatenate([np.arange(n), twice])
    order = np.lexsort((np.arange(len(index)), np.concatenate([arrival, copies])))
    first = np.zeros(len(index), dtype=bool)
    first[:n] = True
    return [events[i] if first[j] else dict(events[i]) for i, j in zip(index[order].tolist(), order.tolist())]


def _starts(counts: np.ndarray) -> np.ndarray:
    """Start offsets of consecutive groups of the given sizes."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _cumulative(weights: np.ndarray) -> np.ndarray:
    """Row-wise cumulative weights whose last column is exactly 1."""
    cum = np.cumsum(weights, axis=1)
    cum[:, -1] = 1.0
    return cum
