"""Stress variants: labelled attacks one step off the simulator's script, on real accounts.

The simulator's scenarios (:mod:`training.simulate`) draw their parameters from stated
ranges; a model can learn those ranges rather than the risk. A *variant family* is an
attack outside them on purpose (faster, larger, smaller, split across more events,
combined with dormancy), injected into accounts that have a real history in an events
file, so that every feature the model sees (novelty, balance, gaps, counts) comes from
that account's own past. Training never sees a variant: they are made here, at
evaluation time, from the file being evaluated.

:func:`make_variants` picks, per family, accounts with no labelled event and enough
history, and a time in the file's last fifth (the test period) where the account has been
quiet long enough for the family; it returns the chosen accounts' deliveries with the
variant events merged in by time, labelled 1 on the events the simulator would label for
the scenario the family varies (funding deposits stay 0), and ``scenario`` set to
``stress_<family>``. :func:`stress_recall` replays them through the stream's own admission
and kernel and reports recall per family at the model's stored threshold.

>>> sorted(FAMILIES)[:3]
['dormant_takeover_instant', 'mule_instant', 'mule_large']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from stream.errors import DataError
from stream.events.schema import Event, event_from_dict
from stream.features.layout import REPORTING_THRESHOLD_USD
from training import simulate as S
from training.dataset import build_features

SECOND_MS = 1_000
MINUTE_MS, HOUR_MS, DAY_MS = S.MINUTE_MS, S.HOUR_MS, S.DAY_MS
PREFIX = "stress_"
DEFAULT_PER_FAMILY = 60
MIN_HISTORY = 8           # events an account needs before the variant
MIN_BALANCE_USD = 300.0   # what an unfunded variant needs to find in the account
_COUNTRIES = ("US", "GB", "DE", "BR", "TR", "NG", "IN", "VN", "KR", "RU", "UA", "AE")
_HOSTING = ("5.188", "45.61", "91.219", "185.220", "193.42")


@dataclass(frozen=True)
class Family:
    """One variant family: which scenario it varies, and how it leaves its ranges."""

    name: str
    varies: str           # the simulator scenario it is a variant of
    off_script: str       # how it departs from that scenario's training ranges
    build: Callable[["_Ctx"], list[dict]]
    min_silence_days: float = 0.0  # the account must have been quiet this long
    funded: bool = False  # brings its own deposits (else needs MIN_BALANCE_USD)


class _Ctx:
    """What a builder may use: the account, its balance and habits, fresh ids, a clock."""

    def __init__(self, sim: "_Injector", family: str, acct: str, t: int, balance: float, usual: tuple,
                 asset: str, rng: np.random.Generator) -> None:
        self.sim, self.family, self.acct, self.t, self.balance = sim, family, acct, t, balance
        self.usual, self.asset, self.rng = usual, asset, rng

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{self.rng.integers(0, 2**63):016x}"

    def attacker(self, foreign: bool = True) -> tuple[str, str, str]:
        """A never-seen device and IP (a hosting address abroad, or residential at home)."""
        home = self.usual[2]
        if foreign:
            country = str(self.rng.choice([c for c in _COUNTRIES if c != home]))
            ip = f"{self.rng.choice(_HOSTING)}.{self.rng.integers(0, 256)}.{self.rng.integers(1, 255)}"
        else:
            country = home
            ip = f"{self.rng.integers(11, 224)}.{self.rng.integers(0, 256)}.{self.rng.integers(0, 256)}.{self.rng.integers(1, 255)}"
        return self.fresh("dev-"), ip, country

    def event(self, ts: int, etype: str, usd: float, ctx: tuple[str, str, str], *, label: int,
              counterparty: str | None = None) -> dict:
        price = self.sim.price(self.asset, ts)
        amount = 0.0 if etype == "login" else round(usd / price, 8)
        e = {"event_id": self.sim.next_id(), "ts": int(ts), "account_id": self.acct, "type": etype,
             "asset": self.asset, "amount": amount, "usd_value": round(amount * price, 4),
             "ip": ctx[1], "device_id": ctx[0], "country": ctx[2], "label": label,
             "scenario": PREFIX + self.family}
        if counterparty is not None:
            e["counterparty"] = counterparty
        return e


def _drain(c: _Ctx, t: int, gaps_ms: Sequence[float], total_share: float, ctx: tuple, *,
           fresh_each: bool) -> list[dict]:
    """Outflows at ``t + cumsum(gaps)`` taking ``total_share`` of the balance in equal cuts."""
    n = len(gaps_ms)
    dest = c.fresh("addr-")
    out, balance, ts = [], c.balance, float(t)
    per = 1.0 - (1.0 - total_share) ** (1.0 / n)
    for g in gaps_ms:
        ts += g
        usd = balance * per
        balance -= usd
        out.append(c.event(int(ts), "withdrawal", usd, ctx, label=1,
                           counterparty=c.fresh("addr-") if fresh_each else dest))
    return out


def takeover(c: _Ctx, delay_ms: float, n_out: int, gap_ms: tuple[float, float], share: tuple[float, float],
             *, fresh_each: bool = False) -> list[dict]:
    """A takeover: a login from a new device and IP (abroad on a hosting address 3 times in
    4), then ``n_out`` withdrawals, the first ``delay_ms`` after it, together taking a
    share of the balance drawn from ``share``."""
    rng = c.rng
    ctx = c.attacker(foreign=rng.random() < 0.75)
    login = c.event(c.t, "login", 0.0, ctx, label=1)
    gaps = [delay_ms] + list(rng.uniform(*gap_ms, n_out - 1))
    return [login] + _drain(c, c.t, gaps, rng.uniform(*share), ctx, fresh_each=fresh_each)


# Each family's ranges are set against the simulator's (training.simulate): beyond its edge.
_INSTANT_S = (1.0, 0.8 * S.ATO_DELAY_S[0])
_SPLIT_N = (2 * S.ATO_WITHDRAWALS[1], 4 * S.ATO_WITHDRAWALS[1])
_PARTIAL_SHARE = (0.5 * S.ATO_SHARE[0], 0.9 * S.ATO_SHARE[0])
_DORMANT_INSTANT_S = (2.0, 0.33 * S.DORMANT_DELAY_S[0])
_MULE_INSTANT_S = (5.0, 0.66 * S.MULE_DELAY_S[0])
_MULE_LARGE_USD = (1.6 * S.MULE_DEPOSIT_USD[1], 8 * S.MULE_DEPOSIT_USD[1])
_STRUCT_N = (int(1.4 * S.STRUCT_WITHDRAWALS[1]), int(2.2 * S.STRUCT_WITHDRAWALS[1]))
_VELOCITY_GAP_S = (0.33 * S.VELOCITY_GAP_S[0], 0.83 * S.VELOCITY_GAP_S[0])


def _takeover_instant(c: _Ctx) -> list[dict]:
    return takeover(c, c.rng.uniform(*_INSTANT_S) * SECOND_MS, int(c.rng.integers(1, 3)), (2e3, 20e3), (0.8, 1.0))


def _takeover_split(c: _Ctx) -> list[dict]:
    return takeover(c, c.rng.uniform(0.5, 10) * MINUTE_MS, int(c.rng.integers(*_SPLIT_N)), (20e3, 120e3),
                    (0.8, 1.0), fresh_each=True)


def _takeover_partial(c: _Ctx) -> list[dict]:
    return takeover(c, c.rng.uniform(0.5, 20) * MINUTE_MS, 1, (0, 0), _PARTIAL_SHARE)


def _dormant_takeover_instant(c: _Ctx) -> list[dict]:
    return takeover(c, c.rng.uniform(*_DORMANT_INSTANT_S) * SECOND_MS, int(c.rng.integers(1, 3)), (2e3, 20e3),
                    (0.9, 1.0))


def _mule(c: _Ctx, reps: int, usd: tuple[float, float], delay_ms: tuple[float, float],
          share: tuple[float, float]) -> list[dict]:
    rng, out, t = c.rng, [], float(c.t)
    for r in range(reps):
        t += rng.uniform(2, 30) * HOUR_MS if r else 0.0
        dep = float(math.exp(rng.uniform(math.log(usd[0]), math.log(usd[1]))))
        out.append(c.event(int(t), "deposit", dep, c.usual, label=0))
        t += rng.uniform(*delay_ms)
        out.append(c.event(int(t), "withdrawal", dep * rng.uniform(*share), c.usual, label=1,
                           counterparty=c.fresh("addr-")))
    return out


def _mule_instant(c: _Ctx) -> list[dict]:
    return _mule(c, int(c.rng.integers(2, 5)), (1_000, 20_000),
                 (_MULE_INSTANT_S[0] * SECOND_MS, _MULE_INSTANT_S[1] * SECOND_MS), (0.95, 0.995))


def _mule_large(c: _Ctx) -> list[dict]:
    return _mule(c, int(c.rng.integers(2, 4)), _MULE_LARGE_USD, (2 * MINUTE_MS, 30 * MINUTE_MS), (0.85, 0.98))


def _structuring_many(c: _Ctx) -> list[dict]:
    rng = c.rng
    n = int(rng.integers(*_STRUCT_N))
    usd = rng.uniform(*S.STRUCT_FRACTION, n) * REPORTING_THRESHOLD_USD
    out = [c.event(c.t, "deposit", float(usd.sum() * rng.uniform(1.0, 1.1)), c.usual, label=0)]
    span = rng.uniform(1, 2) * DAY_MS
    times = c.t + rng.uniform(1, 6) * HOUR_MS + np.sort(rng.uniform(0, span, n))
    dests = [c.fresh("addr-") for _ in range(int(rng.integers(1, 4)))]
    for ts, v in zip(times.tolist(), usd.tolist()):
        out.append(c.event(int(ts), "withdrawal", v, c.usual, label=1,
                           counterparty=dests[int(rng.integers(len(dests)))]))
    return out


def _velocity_faster(c: _Ctx) -> list[dict]:
    rng = c.rng
    n = int(rng.integers(100, 300))
    gap = rng.uniform(*_VELOCITY_GAP_S) * SECOND_MS
    gaps = np.clip(gap * (1 + rng.normal(0, 0.05, n)), 50.0, _VELOCITY_GAP_S[1] * SECOND_MS)
    gaps[0] = 0.0
    return _drain(c, c.t, gaps.tolist(), rng.uniform(0.6, 0.95), c.usual, fresh_each=False)


def _s(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}"


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("takeover_instant", "account_takeover",
           f"first withdrawal {_s(*_INSTANT_S)} s after the new-device login "
           f"(training: {S.ATO_DELAY_S[0]:g} s and later)", _takeover_instant),
    Family("takeover_split", "account_takeover",
           f"{_SPLIT_N[0]}-{_SPLIT_N[1] - 1} withdrawals, each to a fresh address "
           f"(training: {S.ATO_WITHDRAWALS[0]}-{S.ATO_WITHDRAWALS[1]})", _takeover_split),
    Family("takeover_partial", "account_takeover",
           f"one withdrawal of {_s(*(100 * x for x in _PARTIAL_SHARE))} % of the balance "
           f"(training: {_s(*(100 * x for x in S.ATO_SHARE))} %)", _takeover_partial),
    Family("dormant_takeover_instant", "dormant_reactivation",
           f"a takeover of an account quiet for 7+ days, withdrawing {_s(*_DORMANT_INSTANT_S)} s after the "
           f"login (training: {S.DORMANT_DELAY_S[0]:g} s and later)", _dormant_takeover_instant,
           min_silence_days=7.0),
    Family("mule_instant", "mule_turnaround",
           f"each deposit withdrawn {_s(*_MULE_INSTANT_S)} s after it arrives "
           f"(training: {S.MULE_DELAY_S[0]:g} s and later)", _mule_instant, funded=True),
    Family("mule_large", "mule_turnaround",
           f"deposits of {_s(*_MULE_LARGE_USD)} USD (training: {_s(*S.MULE_DEPOSIT_USD)})", _mule_large,
           funded=True),
    Family("structuring_many", "structuring",
           f"{_STRUCT_N[0]}-{_STRUCT_N[1] - 1} just-under-threshold withdrawals in 1-2 days "
           f"(training: {S.STRUCT_WITHDRAWALS[0]}-{S.STRUCT_WITHDRAWALS[1]})", _structuring_many, funded=True),
    Family("velocity_faster", "velocity_burst",
           f"100-299 withdrawals {_s(*_VELOCITY_GAP_S)} s apart "
           f"(training: {S.VELOCITY_GAP_S[0]:g} s and slower)", _velocity_faster),
)}


class _Injector:
    """Accounts, balances and prices of a history, and the variants placed in it."""

    def __init__(self, events: Sequence[dict], seed: int) -> None:
        self.seed, self._n = seed, 0
        self.events = events
        ts = np.array([e["ts"] for e in events], dtype=np.int64)
        self.t_lo, self.t_hi = int(ts.min()), int(ts.max())
        order = np.argsort(ts, kind="stable")
        self.by_acct: dict[str, list[int]] = {}
        tainted: set[str] = set()
        for i in order.tolist():
            e = events[i]
            self.by_acct.setdefault(e["account_id"], []).append(i)
            if e.get("label") == 1:
                tainted.add(e["account_id"])
        self.clean = sorted(a for a in self.by_acct if a not in tainted)
        self._prices: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        by_asset: dict[str, list[tuple[int, float]]] = {}
        for i in order.tolist():
            e = events[i]
            if e.get("amount", 0) > 0 and e.get("usd_value", 0) > 0:
                by_asset.setdefault(e["asset"], []).append((e["ts"], e["usd_value"] / e["amount"]))
        for asset, pairs in by_asset.items():
            arr = np.array(pairs)
            self._prices[asset] = (arr[:, 0].astype(np.int64), arr[:, 1])

    def next_id(self) -> str:
        self._n += 1
        return f"stress-{self.seed}-{self._n:07d}"

    def price(self, asset: str, ts: int) -> float:
        t, p = self._prices[asset]
        return float(p[max(0, int(np.searchsorted(t, ts, side="right")) - 1)])

    def slot(self, acct: str, family: Family, rng: np.random.Generator) -> tuple[int, float, tuple, str] | None:
        """A time in the last fifth where the account qualifies, its balance, habits and asset."""
        idx = self.by_acct[acct]
        ts = [self.events[i]["ts"] for i in idx]
        w0 = self.t_lo + int(0.8 * (self.t_hi - self.t_lo))
        w1 = self.t_hi - HOUR_MS
        quiet = int(family.min_silence_days * DAY_MS)
        windows = []
        for k in range(len(ts)):
            if k + 1 < MIN_HISTORY:
                continue
            lo = max(ts[k] + max(quiet, MINUTE_MS), w0)
            hi = min(ts[k + 1] - MINUTE_MS if k + 1 < len(ts) else w1, w1)
            if hi > lo:
                windows.append((lo, hi, k))
        if not windows:
            return None
        lo, hi, k = windows[int(rng.integers(len(windows)))]
        t = int(rng.integers(lo, hi))
        balance, devices, ips, countries, assets = 0.0, {}, {}, {}, {}
        for i in idx[:k + 1]:
            e = self.events[i]
            usd = float(e.get("usd_value", 0.0))
            if e["type"] == "deposit":
                balance += usd
            elif e["type"] in ("withdrawal", "transfer"):
                balance = max(balance - usd, 0.0)
            for table, key in ((devices, "device_id"), (ips, "ip"), (countries, "country")):
                if e.get(key):
                    table[e[key]] = table.get(e[key], 0) + 1
            if e["type"] != "login" and e["asset"] in self._prices:
                assets[e["asset"]] = assets.get(e["asset"], 0) + 1
        if not (devices and ips and countries and assets):
            return None
        if not family.funded and balance < MIN_BALANCE_USD:
            return None
        usual = tuple(max(tb, key=tb.get) for tb in (devices, ips, countries))
        return t, balance, usual, max(assets, key=assets.get)


def _resolve(families: Sequence[str | Family] | None) -> list[Family]:
    """Family objects for names of :data:`FAMILIES` or families given as objects (default: all)."""
    chosen = [FAMILIES.get(f, f) if isinstance(f, str) else f for f in (families or FAMILIES)]
    unknown = [f for f in chosen if isinstance(f, str)]
    if unknown:
        raise DataError(f"unknown stress families: {', '.join(unknown)} (known: {', '.join(FAMILIES)})")
    return chosen


def make_variants(events: Sequence[dict], seed: int = 0, *, per_family: int = DEFAULT_PER_FAMILY,
                  families: Sequence[str | Family] | None = None) -> tuple[list[dict], dict[str, int]]:
    """The deliveries of the accounts chosen for variants, with the variants merged in.

    ``events`` are event dicts in delivery order (a file as ``txwatch simulate`` writes
    it). Each chosen account takes one variant; variant events arrive on time and are
    placed after every delivery that arrived before them. ``families`` are names of
    :data:`FAMILIES` or :class:`Family` objects (default: all of them). Returns the merged deliveries
    and the number of instances per family (fewer than ``per_family`` when the history
    has too few qualifying accounts).

    Raises:
        DataError: an unknown family, or no family found a single qualifying account.
    """
    chosen = _resolve(families)
    if not events:
        raise DataError("stress variants need a history to inject into")
    rng = np.random.default_rng([int(seed), 0x57E55])
    inj = _Injector(events, seed)
    pool = list(inj.clean)
    rng.shuffle(pool)
    used: set[str] = set()
    injected: dict[str, list[dict]] = {}
    counts: dict[str, int] = {}
    for fam in chosen:
        name, n = fam.name, 0
        for acct in pool:
            if n >= per_family:
                break
            if acct in used:
                continue
            slot = inj.slot(acct, fam, rng)
            if slot is None:
                continue
            injected[acct] = fam.build(_Ctx(inj, name, acct, *slot, rng=rng))
            used.add(acct)
            n += 1
        counts[name] = n
    if not injected:
        raise DataError("no account of this history qualifies for a stress variant "
                        f"(each needs {MIN_HISTORY} events before the last fifth and no labelled event)")
    # Deliveries of the chosen accounts in file order, variants merged by arrival.
    mine = [e for e in events if e["account_id"] in injected]
    arrival = np.maximum.accumulate(np.array([e["ts"] for e in mine], dtype=np.int64))
    extra = sorted((e for evs in injected.values() for e in evs), key=lambda e: e["ts"])
    at = np.searchsorted(arrival, [e["ts"] for e in extra], side="right")
    out: list[dict] = []
    j = 0
    for i, e in enumerate(mine):
        while j < len(extra) and at[j] <= i:
            out.append(extra[j])
            j += 1
        out.append(e)
    out.extend(extra[j:])
    return out, counts


def stress_recall(models: dict[str, Any], events: Sequence[dict], seed: int = 0, *,
                  per_family: int = DEFAULT_PER_FAMILY,
                  families: Sequence[str | Family] | None = None) -> dict[str, Any]:
    """Recall per variant family at each model's threshold.

    ``models`` maps a name to ``(score_fn, threshold)``. Variant events are replayed with
    the chosen accounts' real histories through the stream's admission and kernel; per
    family, ``recall`` is the share of its labelled events at or above the threshold and
    ``accounts_alerted`` the share of its instances with at least one alert.
    """
    merged, counts = make_variants(events, seed, per_family=per_family, families=families)
    by_name = {f.name: f for f in _resolve(families)}
    evs: list[Event] = [event_from_dict(e) for e in merged]
    feats = build_features(evs)
    applied = feats.applied
    kept = [merged[i] for i in applied.tolist()]
    scen = np.array([e.get("scenario") or "" for e in kept], dtype=object)
    label = np.array([e.get("label") or 0 for e in kept], dtype=np.int8)
    acct = np.array([e["account_id"] for e in kept], dtype=object)
    is_variant = np.array([s.startswith(PREFIX) for s in scen])
    X = feats.X[is_variant]
    scen, label, acct = scen[is_variant], label[is_variant], acct[is_variant]
    out: dict[str, Any] = {"seed": seed, "instances": counts, "families": {}}
    scores = {name: (fn(X), thr) for name, (fn, thr) in models.items()}
    for name in counts:
        m = scen == PREFIX + name
        pos = m & (label == 1)
        fam = by_name[name]
        row: dict[str, Any] = {"varies": fam.varies, "off_script": fam.off_script,
                               "instances": counts[name], "events": int(pos.sum())}
        for who, (p, thr) in scores.items():
            hit = p >= thr
            accounts = set(acct[m].tolist())
            alerted = set(acct[m & hit].tolist())
            row[who] = {"recall": float(hit[pos].mean()) if pos.any() else None,
                        "accounts_alerted": len(alerted) / len(accounts) if accounts else None}
        out["families"][name] = row
    for who in models:
        recalls = [r[who]["recall"] for r in out["families"].values() if r[who]["recall"] is not None]
        out.setdefault("min_recall", {})[who] = min(recalls) if recalls else None
    if len(models) == 2 and "student" in models and "teacher" in models:
        gaps = [r["teacher"]["recall"] - r["student"]["recall"] for r in out["families"].values()
                if r["student"]["recall"] is not None]
        out["max_student_shortfall"] = max(gaps) if gaps else None
    return out


def summary_line(report: dict[str, Any]) -> str:
    """One human line: recall per family, student (teacher)."""
    parts = []
    for name, r in report["families"].items():
        s, t = r.get("student", {}).get("recall"), r.get("teacher", {}).get("recall")
        parts.append(f"{name} {s:.2f} ({t:.2f})" if s is not None and t is not None else f"{name} n/a")
    return "stress recall, student (teacher): " + ", ".join(parts)
