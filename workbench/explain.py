"""Reasons in words: an alert's reason codes as sentences a compliance reviewer reads.

Each feature of :data:`stream.features.layout.FEATURE_NAMES` (defined in
:mod:`stream.features.reference`) is turned back into human units: ``log1p`` of USD into
dollars, ``log1p`` of seconds into durations, ratios into percentages. The account's usual
value is given only where the feature row or the event determines it exactly (the typical
amount is ``expm1(log_usd - log_usd_vs_typical)``, the EWMA the reference engine keeps).
Pure, no I/O; input comes straight from JSON and is never trusted: anything missing or
not finite gives a plainer sentence, never an exception. Output is plain text.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from stream.features.layout import (
    FEATURE_NAMES, GAP_NONE, NEAR_THRESHOLD_FRACTION, REPORTING_THRESHOLD_USD, ROUND_TRIP_AMOUNT_TOLERANCE,
    ROUND_TRIP_WINDOW_S, TYPE_CODE,
)

_VERB = {"deposit": "deposited", "withdrawal": "withdrew", "trade": "traded", "transfer": "transferred out",
         "login": "logged in with"}
_HORIZON = {"5m": ("in the last 5 minutes", "per 5 minutes", 300.0),
            "1h": ("in the last hour", "an hour", 3600.0),
            "24h": ("in the last 24 hours", "a day", 86400.0)}
_COUNTED = {"cnt": ("event", "events"), "wd_cnt": ("withdrawal", "withdrawals"), "trade_cnt": ("trade", "trades")}
_NOVEL = {"new_device": ("device", "device_id", "n_devices", "devices"), "new_ip": ("IP address", "ip", None, ""),
          "new_country": ("country", "country", "n_countries", "countries")}
_OUT = ("withdrawal", "transfer")
_FLAGS = {"is_deposit", "is_withdrawal", "is_trade", "is_transfer", "is_login", "is_weekend", "new_device", "new_ip",
          "new_country", "new_counterparty", "near_threshold", "cp_is_top", "round_trip", "late"}
# The values update() can produce (looser where it is unbounded); anything else is not trusted.
_RANGES = {"hour_sin": (-1, 1), "hour_cos": (-1, 1), "usd_z": (-50, 50), "log_usd_vs_typical": (-50, 50),
           "out_balance_ratio": (0, 100), "wd_vs_last_deposit": (0, 100), "cp_top_share": (0, 1),
           "price_vs_mark": (0, 5), "n_devices": (0, 100), "n_countries": (0, 100)}


def _plausible(name: str, v: float) -> bool:
    """Whether ``v`` is a value the reference engine could have given feature ``name``."""
    if name in _FLAGS:
        return v in (0.0, 1.0)
    lo, hi = _RANGES.get(name, (0, 50) if name.startswith("log_") else (0, 1e7))
    return lo <= v <= hi


def _num(x: object) -> float | None:
    """A finite float from a JSON value, or None."""
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float, str)):
        try:
            v = float(x)
        except (ValueError, OverflowError):
            return None
        return v if math.isfinite(v) else None
    return None


def _text(x: object) -> str | None:
    """A non-empty string field, or None."""
    return "".join(ch for ch in x.strip()[:80] if ch.isprintable()) or None if isinstance(x, str) else None


def _not(etype: str | None, kinds: tuple[str, ...]) -> bool:
    """True when the event type is known and is none of ``kinds``."""
    return etype is not None and etype not in kinds


def _usd(x: float) -> str:
    """Dollars: ``$12,400``, or cents below $10."""
    return f"${x:,.2f}" if abs(x) < 10 else f"${x:,.0f}"


def _count(x: float) -> str:
    """A (decayed) count rounded sensibly."""
    if abs(x - round(x)) < 0.05 or x >= 10:
        return f"{round(x):,}"
    return f"{x:.1f}"


def _rate(x: float) -> str:
    """A small positive rate with two significant digits."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def _plural(x: float, one: str, many: str) -> str:
    return f"{_count(x)} {one if _count(x) == '1' else many}"


def _pct(ratio: float) -> str:
    """``0.97`` -> ``97 %``."""
    return f"{ratio * 100:,.0f} %"


def _duration(seconds: float) -> str:
    """``45 seconds``, ``12 minutes``, ``3 hours``, ``2 days``."""
    seconds = round(seconds, 3)
    for unit, size, upto in (("second", 1, 90), ("minute", 60, 5400), ("hour", 3600, 129600)):
        if seconds < upto:
            n = math.floor(seconds / size + 0.5)
            return f"{n} {unit}{'' if n == 1 else 's'}"
    n = math.floor(seconds / 86400 + 0.5)
    return f"{n:,} day{'' if n == 1 else 's'}"


def _etype(f: dict, ev: dict) -> str | None:
    """The event type, from the event or the row's one-hot."""
    t = ev.get("type")
    if isinstance(t, str) and t in TYPE_CODE:
        return t
    return next((name for name in TYPE_CODE if _num(f.get("is_" + name)) == 1.0), None)


def _usd_of(f: dict, ev: dict) -> float | None:
    """The event's USD value: the event's field, else undone from ``log_usd``."""
    usd = _num(ev.get("usd_value"))
    if usd is None and (lu := _num(f.get("log_usd"))) is not None and lu < 700:
        usd = math.expm1(lu)
    return usd if usd is not None and 0 <= usd < 1e15 else None


def _n_events(f: dict) -> float | None:
    """Events on the account including this one (``log_n_events = log1p(n)``)."""
    v = _num(f.get("log_n_events"))
    return round(math.expm1(v)) if v is not None and 0 <= v < 50 else None


def _age_s(f: dict) -> float | None:
    """Account age in seconds (``log_account_age = log1p(seconds since its first event)``)."""
    v = _num(f.get("log_account_age"))
    return math.expm1(v) if v is not None and 0 <= v < 50 else None


def _typical(f: dict, ev: dict) -> float | None:
    """The account's typical USD amount before this event, ``expm1(mu)``, when the row gives it.

    ``log_usd_vs_typical = log1p(usd) - mu``; it is 0 for logins, first events and before
    any typical amount exists, so 0 gives nothing here.
    """
    vs = _num(f.get("log_usd_vs_typical"))
    lu = _num(f.get("log_usd"))
    if lu is None and (usd := _usd_of({}, ev)) is not None:
        lu = math.log1p(usd)
    if vs is None or lu is None or vs == 0.0 or _etype(f, ev) == "login" or _n_events(f) == 1:
        return None
    mu = lu - vs
    return math.expm1(mu) if 0 <= mu < 35 else None


def _gap(feature: str, v: float, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    noun = _etype(f, ev) or "event"
    since, never = {"log_gap_prev": ("the account's previous event", "any event"),
                    "log_gap_same_type": (f"the previous {noun}", f"a {noun}"),
                    "log_gap_deposit": ("the last deposit", "a deposit"),
                    "log_gap_login": ("the last login", "a login"),
                    "log_gap_novelty": ("the last event from a new device, IP or country",
                                        "a new device, IP or country")}[feature]
    if v >= GAP_NONE - 1e-9:
        return f"{noun}; never {never} before on this account", None, None
    seconds = max(math.expm1(v), 0.0)
    usual = None
    if feature == "log_gap_prev" and (n := _n_events(f)) and n > 1 and (age := _age_s(f)):
        usual = f"about {_duration(age / (n - 1))} between events"
    if feature == "log_gap_novelty" and seconds < 0.5 and any(_num(f.get(k)) == 1.0 for k in _NOVEL):
        return f"{noun} itself from a new device, IP or country", 0.0, None
    text = f"{noun} {_duration(seconds)} after {since}"
    return (text + f"; usually {usual}" if usual else text), round(seconds, 3), usual


def _counted(feature: str, v: float, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    kind, horizon = feature.rsplit("_", 1)
    one, many = _COUNTED[kind]
    during, per, span = _HORIZON[horizon]
    text = f"{'about ' if _count(v) != f'{v:g}' or '.' in _count(v) else ''}{_plural(v, one, many)} {during}"
    usual = None
    n, age = _n_events(f), _age_s(f)
    if n and age:
        any_type = " of any type" if kind != "cnt" else ""
        usual = (f"the account averages {_rate(n / age * span)} events{any_type} {per}" if age >= span
                 else f"the account is only {_duration(age)} old, with {_plural(n, 'event', 'events')}")
    return (f"{text}; {usual}" if usual else text), round(v, 1), usual


def _usd_sum(feature: str, v: float, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    horizon = feature.rsplit("_", 1)[1]
    total = math.expm1(min(v, 700))
    what = "withdrawn" if feature.startswith("log_wd_") else "moved (all event types)"
    return f"{_usd(total)} {what} {_HORIZON[horizon][0]}, time-decayed", round(total, 2), None


def _amount(feature: str, v: float, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    etype = _etype(f, ev)
    usd = _usd_of(f, ev)
    if usd is None:
        return "", None, None
    if etype == "login":
        return "a login, which carries no amount", usd, None
    head = f"{_VERB.get(etype or '', 'moved')} {_usd(usd)}"
    typical = _typical(f, ev)
    usual = f"about {_usd(typical)}" if typical is not None else None
    if feature == "usd_z" and v != 0:
        head += (f", {abs(v):.1f} standard deviations {'above' if v > 0 else 'below'}"
                 " the account's typical amount (log scale)")
        vs = _num(f.get("log_usd_vs_typical"))
        if typical is not None and vs:
            sd, mu = vs / v, math.log1p(typical)
            if 0 < sd < 10:
                usual += f" (mostly {_usd(math.expm1(max(mu - sd, 0)))} to {_usd(math.expm1(mu + sd))})"
    elif feature != "log_usd" and v == 0:
        return f"{head}; the account's typical amount, or no typical amount on record yet", usd, None
    if usual:
        head += f"; usually {usual}" + (f", {usd / typical:,.1f} times that" if feature == "log_usd_vs_typical"
                                        and typical >= 1 and usd / typical >= 2 else "")
    return head, usd, usual


def _novel(feature: str, v: float, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    if feature == "new_counterparty":
        cp = _text(ev.get("counterparty"))
        if _not(_etype(f, ev), _OUT):
            return "not a withdrawal or transfer, so no payout address to check", v, None
        if not cp and v == 0:
            return "no payout address on this event", v, None
        name = f" ({cp})" if cp else ""
        return (f"first payout to this address{name}" if v == 1 else f"payout address{name} used before"), v, None
    what, key, count_feature, plural = _NOVEL[feature]
    t = _text(ev.get(key))
    usual = None
    if count_feature and (k := _num(f.get(count_feature))) is not None and k >= 1:
        usual = f"{_plural(k, what, plural)} seen on the account recently"
    if v == 1:
        text = f"first time from this {what}" + (f" ({t})" if t else "")
    elif _n_events(f) == 1:
        text = f"the account's first event, so no {what} counts as new"
    else:
        text = f"{what} {t} already seen on the account" if t else f"{what} not new to the account"
    return (f"{text}; {usual}" if usual else text), v, usual


def _flow(feature: str, v: float, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    etype = _etype(f, ev)
    usd = _usd_of(f, ev)
    out = not _not(etype, _OUT if feature == "out_balance_ratio" else ("withdrawal",))
    if not out:
        what = "an outflow" if feature == "out_balance_ratio" else "a withdrawal"
        return f"not {what}, so no share to compute", 0.0, None
    if v == 0:
        return "nothing moved out", 0.0, None
    of = "the estimated balance" if feature == "out_balance_ratio" else "the last deposit"
    verb = _VERB.get(etype or "", "moved out")
    share = f"{v:,.0f} times" if v >= 2 else _pct(v) + " of"
    text = f"{verb} {'at least ' if v >= 100 else ''}{share} {of}"
    ref = usd / v if usd and 1e-9 < v < 100 else None
    if ref is not None:
        ref_text = f"about {_usd(ref)}" if ref > 1.0 + 1e-6 else "nothing (under $1)"
        text += f" ({ref_text} before it)" if feature == "out_balance_ratio" else f" (last deposit {ref_text})"
    usual = f"last deposit about {_usd(ref)}" if feature == "wd_vs_last_deposit" and ref and ref > 1.0 + 1e-6 else None
    return text, round(v * 100, 2), usual


def _threshold(feature: str, v: float, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    limit, low = REPORTING_THRESHOLD_USD, NEAR_THRESHOLD_FRACTION * REPORTING_THRESHOLD_USD
    band = f"at least {_usd(low)}, {_pct(NEAR_THRESHOLD_FRACTION)} of the threshold"
    if feature == "near_threshold_24h":
        return (f"{_plural(v, 'withdrawal', 'withdrawals')} just under the {_usd(limit)} reporting threshold"
                f" ({band}) in the last 24 hours"), round(v, 1), None
    usd = _usd_of(f, ev)
    amount = f" of {_usd(usd)}" if usd is not None else ""
    if v == 1:
        return f"withdrawal{amount} just under the {_usd(limit)} reporting threshold ({band})", usd, None
    noun = _etype(f, ev) or "event"
    return f"{noun}{amount} not just under the {_usd(limit)} reporting threshold ({band})", usd, None


def _counterparty(feature: str, v: float, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    if _not(_etype(f, ev), ("trade", "transfer")):
        return "not a trade or transfer, so no counterparty concentration", v, None
    cp = _text(ev.get("counterparty"))
    if feature == "cp_top_share":
        if v == 0:
            return "no counterparty on this event", 0.0, None
        text = f"the account's top counterparty has {_pct(v)} of its recent trade and transfer activity"
        return text, round(v * 100, 2), None
    name = f"counterparty {cp}" if cp else "the counterparty"
    return f"{name} {'is' if v == 1 else 'is not'} the account's most frequent recent counterparty", v, None


def _trade(feature: str, v: float, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    if feature == "round_trip_1h":
        return f"{_plural(v, 'round-trip trade', 'round-trip trades')} in the last hour", round(v, 1), None
    if _not(_etype(f, ev), ("trade",)):
        return "not a trade", v, None
    if feature == "price_vs_mark":
        off = (math.exp(v) - 1) * 100
        price, amount, usd = (_num(ev.get(k)) for k in ("price", "amount", "usd_value"))
        side = ""
        if price and amount and usd:
            side = " above" if price * amount > usd else " below"
        text = f"executed {'at least ' if v >= 5 else ''}{off:,.{0 if off >= 10 else 1}f} %"
        return f"{text}{side or ' away from'} the mark price", round(off, 2), None
    what = " ".join(filter(None, (_text(ev.get("side")), _text(ev.get("asset")))))
    if v == 1:
        return (f"{what or 'trade'} reverses the previous trade of the same asset (same amount within "
                f"{_pct(ROUND_TRIP_AMOUNT_TOLERANCE)}, within {_duration(ROUND_TRIP_WINDOW_S)})"), v, None
    return f"{what or 'trade'} is not a round trip", v, None


def _clock(feature: str, v: float | None, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    s, c, ts = _num(f.get("hour_sin")), _num(f.get("hour_cos")), _num(ev.get("ts"))
    when = None
    if ts is not None and 0 <= ts < 4.2e12:
        when = datetime.fromtimestamp(ts / 1000, timezone.utc)
    if feature == "is_weekend":
        weekend = v if v is not None else (float(when.weekday() >= 5) if when else None)
        if weekend is None:
            return "", None, None
        day = f" ({when:%A}, UTC)" if when and (when.weekday() >= 5) == (weekend == 1) else ""
        return f"on a {'weekend' if weekend == 1 else 'weekday'}{day}", weekend, None
    if s is not None and c is not None and (s or c):
        hours = (math.atan2(s, c) % (2 * math.pi)) * 24 / (2 * math.pi)
    elif when is not None:
        hours = when.hour + when.minute / 60
    else:
        return "", None, None
    minutes = round(hours * 60) % 1440
    part = ("night", "morning", "afternoon", "evening")[minutes // 360]
    return f"at {minutes // 60:02d}:{minutes % 60:02d} UTC ({part})", round(hours, 2), None


def _misc(feature: str, v: float, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    if feature == "log_account_age":
        seconds = math.expm1(min(v, 50))
        return f"the account is {_duration(seconds)} old (since its first event)", round(seconds, 3), None
    if feature == "log_n_events":
        n = round(math.expm1(min(v, 50)))
        age = _age_s(f)
        usual = f"about {_rate(n / age * 86400)} events a day" if age and age >= 86400 else None
        text = f"event number {n:,} on this account"
        return (f"{text}; {usual}" if usual else text), float(n), usual
    if feature == "novelty_1h":
        return f"{_plural(v, 'event', 'events')} from a new device, IP or country in the last hour", round(v, 1), None
    if feature in ("n_devices", "n_countries"):
        one, many = ("device", "devices") if feature == "n_devices" else ("country", "countries")
        return f"{_plural(v, one, many)} used by the account recently", v, None
    if feature == "late":
        return ("arrived late, out of event-time order (applied at the account's latest time)" if v == 1
                else "arrived in event-time order"), v, None
    raise KeyError(feature)


def _one_hot(feature: str, v: float | None, f: dict, ev: dict) -> tuple[str, float | None, str | None]:
    etype = _etype(f, ev)
    usd = _usd_of(f, ev)
    kind = feature[3:]
    value = v if v is not None else (float(etype == kind) if etype else None)
    if value is None:
        return "", None, None
    amount = f" of {_usd(usd)}" if usd is not None and etype != "login" else ""
    if value == 1:
        return f"the event is a {kind}{amount}", value, None
    return f"the event is not a {kind}" + (f" (it is a {etype}{amount})" if etype else ""), value, None


def _handler(feature: str):
    if feature.startswith("log_gap_"):
        return _gap
    if feature.startswith(("cnt_", "wd_cnt_", "trade_cnt_")):
        return _counted
    if feature.startswith(("log_usd_", "log_wd_usd_")) and feature != "log_usd_vs_typical":
        return _usd_sum
    if feature.startswith("is_") and feature != "is_weekend":
        return _one_hot
    return {"log_usd": _amount, "usd_z": _amount, "log_usd_vs_typical": _amount, "hour_sin": _clock,
            "hour_cos": _clock, "is_weekend": _clock, "out_balance_ratio": _flow, "wd_vs_last_deposit": _flow,
            "near_threshold": _threshold, "near_threshold_24h": _threshold, "cp_top_share": _counterparty,
            "cp_is_top": _counterparty, "price_vs_mark": _trade, "round_trip": _trade, "round_trip_1h": _trade,
            **dict.fromkeys(("new_device", "new_ip", "new_country", "new_counterparty"), _novel)}.get(feature, _misc)


# Handlers that can speak from the event alone when the row lacks the feature.
_EVENT_ONLY = {"is_deposit", "is_withdrawal", "is_trade", "is_transfer", "is_login", "hour_sin", "hour_cos",
               "is_weekend", "log_usd"}


def sentence(feature: str, features: dict[str, float], event: dict) -> tuple[str, float | None, str | None]:
    """One feature of an event in words.

    Args:
        feature: A name from ``FEATURE_NAMES`` (anything else gets the generic sentence).
        features: The event's feature row as scored (name -> value); may be partial or empty.
        event: The event dict (``usd_value``, ``type``, ``ts``, ``device_id``, ...).

    Returns:
        ``(sentence, the event's value in human units, the account's usual value as text or None)``.

    >>> sentence("out_balance_ratio", {"out_balance_ratio": 0.97}, {"type": "withdrawal", "usd_value": 9700})[0]
    'withdrew 97 % of the estimated balance (about $10,000 before it)'
    >>> sentence("log_gap_deposit", {"log_gap_deposit": math.log1p(40)}, {"type": "withdrawal"})[0]
    'withdrawal 40 seconds after the last deposit'
    >>> sentence("log_usd_vs_typical", {"log_usd_vs_typical": math.log(40)}, {"type": "withdrawal", "usd_value": 47999})
    ('withdrew $47,999; usually about $1,199, 40.0 times that', 47999.0, 'about $1,199')
    >>> sentence("cnt_1h", {"cnt_1h": float("nan")}, {})
    ('cnt_1h = missing', None, None)
    """
    f = features if isinstance(features, dict) else {}
    ev = event if isinstance(event, dict) else {}
    name = feature if isinstance(feature, str) else str(feature)
    v = _num(f.get(name))
    try:
        if name in FEATURE_NAMES and (v is not None and _plausible(name, v) or v is None and name in _EVENT_ONLY):
            text, value, usual = _handler(name)(name, v, f, ev)
            if text:
                return text, value, usual
    except Exception:  # noqa: BLE001 - never let an odd row break an alert page
        pass
    return f"{name} = {'missing' if v is None else f'{v:.4g}'}", v, None


def explain(reasons: list[dict], features: dict[str, float], event: dict) -> list[dict]:
    """One entry per reason: {"feature", "contribution", "value", "usual", "sentence"}.

    Args:
        reasons: ``{"feature", "contribution"}`` dicts (or ``(feature, contribution)`` pairs), largest first.
        features: The feature row as scored, or ``{}`` for alerts written before it was stored.
        event: The alert's event dict.
    """
    out = []
    for r in reasons if isinstance(reasons, (list, tuple)) else []:
        if isinstance(r, dict):
            name, contribution = r.get("feature"), r.get("contribution")
        elif isinstance(r, (list, tuple)) and len(r) == 2:
            name, contribution = r
        else:
            name, contribution = r, None
        name = name if isinstance(name, str) else str(name)
        text, value, usual = sentence(name, features, event)
        out.append({"feature": name, "contribution": _num(contribution), "value": value, "usual": usual,
                    "sentence": text})
    return out
