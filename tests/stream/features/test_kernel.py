"""The compiled batch engine against the Python one: same rows, states and bytes, exactly."""

import random

import numpy as np
import pytest

from stream.events.schema import Event, event_from_dict
from stream.features import kernel as fk
from stream.features.layout import (
    MAX_ADDRESSES, MAX_COUNTERPARTIES, MAX_COUNTRIES, MAX_DEVICES, MAX_IPS, MAX_RECENT_IDS, N_FEATURES,
    StateFormatError, event_key, late_reason,
)
from stream.features.reference import AccountState, FeatureEngine, _h, admit, update
from tests.stream.features.test_reference import T0, ev

HOUR = 3_600_000
OUTCOME = {None: fk.APPLIED, "duplicate": fk.DUPLICATE}


def reference(events, states=None):
    """What the stream worker does per event: ``admit``, then ``update`` if admitted.

    Returns ``(rows, outcomes, reasons, states)``; ``reasons`` holds admit's answers.
    """
    states = {} if states is None else states
    rows, outcomes, reasons = [], [], []
    for e in events:
        st = states.get(e.account_id)
        why = admit(st, e) if st is not None else None
        reasons.append(why)
        outcomes.append(OUTCOME.get(why, fk.LATE))
        if why is None:
            st, row = update(st, e)
            states[e.account_id] = st
            rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(-1, N_FEATURES), np.array(outcomes), reasons, states


def run_batches(engine, events, sizes, **kw):
    """Feed ``events`` to ``engine`` in consecutive batches cycling through ``sizes``."""
    rows, outcomes, behind = [], [], []
    i = k = 0
    while i < len(events):
        batch = events[i:i + sizes[k % len(sizes)]]
        b = np.empty(len(batch))
        X, oc = engine.process(batch, behind=b, **kw)
        rows.append(X)
        outcomes.append(oc)
        behind.append(b)
        i += len(batch)
        k += 1
    return np.concatenate(rows), np.concatenate(outcomes), np.concatenate(behind)


def assert_same_states(engine, states):
    assert set(engine.rows) == set(states)
    blobs = engine.state_bytes(states)
    for acct, st in states.items():
        assert engine.state(acct) == st, acct
        assert blobs[acct] == st.to_bytes(), acct


@pytest.fixture(scope="module")
def sim(small_history):
    """The session's simulated history (~60k events, 600 accounts, event-time order, each
    event once) as Events."""
    events = [event_from_dict(d) for d in small_history]
    assert len(events) >= 50_000
    return events


@pytest.fixture(scope="module")
def replayed(sim):
    """``FeatureEngine().replay`` of the simulated history: ``(rows, engine)``."""
    engine = FeatureEngine()
    return engine.replay(sim), engine


# -- simulated histories ------------------------------------------------------------

@pytest.mark.parametrize("sizes", [[1], [7], [2000], [1, 7, 2000, 13, 500]], ids=str)
def test_rows_and_states_equal_replay(sim, replayed, sizes):
    ref_rows, ref_engine = replayed
    engine = fk.BatchFeatureEngine(capacity=16)  # grows while it runs
    X, outcomes, _ = run_batches(engine, sim, sizes)
    assert (outcomes == fk.APPLIED).all()
    assert X.shape == ref_rows.shape and X.dtype == np.float64
    assert np.array_equal(X, ref_rows)
    assert_same_states(engine, ref_engine.states)
    if max(sizes) >= 2000:  # batches did hold the same account several times
        first = [e.account_id for e in sim[:2000]]
        assert len(set(first)) < len(first)


def test_unchecked_replay_applies_duplicates_like_replay(sim):
    events = sim[:3000] + sim[1000:1500]  # replayed ids: replay applies them again
    engine = fk.BatchFeatureEngine()
    X, outcomes, _ = run_batches(engine, events, [700], check=False)
    ref = FeatureEngine()
    assert (outcomes == fk.APPLIED).all()
    assert np.array_equal(X, ref.replay(events))
    assert_same_states(engine, ref.states)


def test_continues_from_stored_bytes(sim):
    """A worker that loads the Python engine's stored states carries on identically."""
    half = len(sim) // 2
    ref = FeatureEngine()
    ref.replay(sim[:half])
    engine = fk.BatchFeatureEngine()
    for acct, st in ref.states.items():
        engine.load_bytes(acct, st.to_bytes())
    assert_same_states(engine, ref.states)
    X, _, _ = run_batches(engine, sim[half:], [2000])
    assert np.array_equal(X, ref.replay(sim[half:]))
    assert_same_states(engine, ref.states)


def perturbed(events, seed):
    """Simulated events with duplicates, late and out-of-order events, dropped fields."""
    rng = random.Random(seed)
    out = []
    for e in events:
        d = e.to_dict()
        r = rng.random()
        for name in ("device_id", "ip", "country", "counterparty"):
            p = rng.random()
            if p < 0.05:
                d.pop(name, None)
            elif p < 0.08:
                d[name] = ""
        if r < 0.03:
            d["ts"] -= rng.randint(1, HOUR)                  # out of order, within tolerance
        elif r < 0.05:
            d["ts"] -= HOUR + rng.choice([1, rng.randint(1, 5 * HOUR)])  # beyond tolerance
        event = Event(**d)
        out.append(event)
        if rng.random() < 0.04 and out:
            out.append(rng.choice(out[-200:]))              # a replayed event id
    return out


def test_duplicates_late_and_missing_fields_match_admit(sim):
    events = perturbed(sim[:20_000], seed=3)
    ref_rows, ref_outcomes, reasons, states = reference(events)
    assert (ref_outcomes == fk.DUPLICATE).sum() > 100 and (ref_outcomes == fk.LATE).sum() > 100
    engine = fk.BatchFeatureEngine()
    X, outcomes, behind = run_batches(engine, events, [1, 7, 2000])
    assert np.array_equal(outcomes, ref_outcomes)
    assert np.array_equal(X, ref_rows)
    assert X[:, -1].sum() > 100  # late-within-tolerance events applied and flagged
    for k in np.flatnonzero(outcomes == fk.LATE):
        assert late_reason(behind[k]) == reasons[k]
    assert_same_states(engine, states)


def test_refused_events_change_nothing(sim):
    engine = fk.BatchFeatureEngine()
    engine.process(sim[:5000])
    accounts = list(engine.rows)
    before = engine.state_bytes(accounts)
    fstate, istate = engine.fstate.copy(), engine.istate.copy()
    refused = []
    for acct in accounts[:50]:
        st = engine.state(acct)
        last = [e for e in sim[:5000] if e.account_id == acct][-1]
        refused.append(last)  # duplicate
        late = Event(**{**last.to_dict(), "event_id": "late-" + last.event_id,
                        "ts": int(st.last_ts) - HOUR - 1})
        assert admit(st, late).startswith("late by")
        refused.append(late)
    X, outcomes = engine.process(refused)
    assert X.shape == (0, N_FEATURES)
    assert outcomes.tolist() == [fk.DUPLICATE, fk.LATE] * 50
    assert engine.state_bytes(accounts) == before
    assert np.array_equal(engine.fstate, fstate) and np.array_equal(engine.istate, istate)


# -- edge cases ---------------------------------------------------------------------

def edge_events():
    """Hand-made accounts that stress every branch and every bounded list."""
    out = []
    t = T0
    i = 0

    def add(acct, type="deposit", usd=100.0, dt=60_000, **kw):
        nonlocal t, i
        t += dt
        i += 1
        out.append(ev(i, t, type, usd, acct=acct, **kw))

    # Missing or empty optional strings, first event included.
    add("m", device_id=None, ip="", country=None)
    add("m", "withdrawal", 50.0, device_id="", ip=None, country="", counterparty="")
    add("m", "transfer", 20.0, device_id="d1", counterparty=None)
    add("m", "trade", 10.0, device_id=None, ip="1.2.3.4", counterparty="")
    add("m", "login", 0.0, dt=0)
    # Trades with price 0, price None, amount 0, usd 0, and round trips.
    add("t", "trade", 1000.0, price=0.0, counterparty="x")
    add("t", "trade", 1000.0, price=None, side="sell", amount=0.02)
    add("t", "trade", 1000.0, amount=0.0, side="sell")
    add("t", "trade", 0.0, amount=0.0, side="buy")
    add("t", "trade", 500.0, amount=0.01, side="buy", asset="ETH")
    add("t", "trade", 500.0, amount=0.0101, side="sell", asset="ETH", dt=1000)
    add("t", "trade", 500.0, amount=0.0101, side="buy", asset="ETH", dt=HOUR)
    add("t", "trade", 500.0, amount=0.0101, side=None, asset="")
    # Out-of-order within tolerance (applied at the latest time, flagged late), exactly at
    # the tolerance (applied) and just beyond (refused).
    add("o", "deposit", 10_000.0)
    add("o", "withdrawal", 9_000.0, dt=-30 * 60_000, counterparty="p")
    add("o", "withdrawal", 9_999.0, dt=30 * 60_000 + 5, counterparty="p")
    add("o", "deposit", 1.0, dt=-HOUR)
    add("o", "deposit", 1.0, dt=-1)
    add("o", "deposit", 1.0, dt=HOUR + 1)
    # Bounded lists beyond their caps: devices, IPs, countries, addresses, counterparties.
    for k in range(3 * MAX_ADDRESSES):
        add("cap", "withdrawal" if k % 3 else "transfer", 10.0 + k,
            device_id=f"dev{k % (MAX_DEVICES + 3)}", ip=f"ip{k % (MAX_IPS + 1)}",
            country=f"C{k % (MAX_COUNTRIES + 2)}", counterparty=f"addr{k % (MAX_ADDRESSES + 3)}")
    for k in range(4 * MAX_COUNTERPARTIES):  # revisits move an entry to the front
        add("cap", "trade", 5.0, device_id=f"dev{k % 3}", counterparty=f"cp{(k * 7) % 9}")
    for k in range(MAX_RECENT_IDS + 5):
        add("ids", "login", 0.0, dt=1)
    # Many same-time events (dt = 0 decays nothing) and a non-ASCII / NUL-free unicode id.
    for k in range(5):
        add("same", "transfer", 100.0, dt=0, counterparty=f"c{k % 2}", device_id="gerät-ü")
    return out


def test_edge_cases_match_python_engine():
    events = edge_events()
    ref_rows, ref_outcomes, _, states = reference(events)
    assert fk.LATE in ref_outcomes.tolist()
    assert len(states["cap"].devices) == MAX_DEVICES and len(states["cap"].ips) == MAX_IPS
    assert len(states["cap"].countries) == MAX_COUNTRIES
    assert len(states["cap"].addresses) == MAX_ADDRESSES
    assert len(states["cap"].cp_keys) == MAX_COUNTERPARTIES
    assert len(states["ids"].recent_ids) == MAX_RECENT_IDS
    for sizes in ([1], [7], [len(events)]):
        engine = fk.BatchFeatureEngine()
        X, outcomes, _ = run_batches(engine, events, sizes)
        assert np.array_equal(outcomes, ref_outcomes)
        assert np.array_equal(X, ref_rows)
        assert_same_states(engine, states)


def test_counterparty_ties_pick_the_first_minimum():
    """Space-saving eviction replaces the first of equal minimum weights, as ``list.index``."""
    events, expected, engine = [], [], fk.BatchFeatureEngine()
    states = {}
    for n, weights in enumerate([[0.5, 0.25, 0.25, 0.5], [1.0, 1.0, 1.0, 1.0], [2.0, 0.5, 3.0, 0.5],
                                 [0.25, 0.25], [3.0, 1.0, 3.0, 1.0]]):
        acct = f"tie{n}"
        st = AccountState()
        st.n, st.last_ts, st.first_ts = 4.0, float(T0), float(T0 - HOUR)
        st.cp_keys = [_h(f"k{j}") for j in range(len(weights))]
        st.cp_weights = list(weights)
        st.cp_total = sum(weights)
        states[acct] = st
        engine.set_state(acct, st)
        assert engine.state(acct) == st
        for k, cp in enumerate(["new1", "k1", "new2", "new3", "k0"]):
            events.append(ev(100 * n + k, T0 + k * 1000, "transfer" if k % 2 else "trade", 50.0,
                             acct=acct, counterparty=cp))
    py_states = {a: AccountState.from_bytes(s.to_bytes()) for a, s in states.items()}
    ref_rows, _, _, py_states = reference(events, py_states)
    X, outcomes = engine.process(events)
    assert np.array_equal(X, ref_rows)
    assert_same_states(engine, py_states)


def test_random_histories_match():
    """Dense random histories: few accounts, small value pools, every field sometimes absent."""
    rng = random.Random(7)
    events = []
    t = T0
    for i in range(8000):
        t += rng.randint(0, 120_000)
        kind = rng.choice(["deposit", "withdrawal", "trade", "transfer", "login"])
        kw = {name: rng.choice([None, "", f"{name[0]}{rng.randint(0, 12)}"])
              for name in ("device_id", "ip", "country", "counterparty")}
        if kind == "trade":
            kw.update(side=rng.choice(["buy", "sell"]), price=rng.choice([0.0, 50_000.0 * rng.uniform(0.9, 1.1)]))
        usd = rng.choice([0.0, 9_000.0, rng.lognormvariate(5, 2)])
        e = ev(i, t - rng.randint(0, 2 * HOUR), kind, usd, acct=f"a{rng.randint(0, 5)}",
               amount=rng.choice([0.0, usd / 50_000.0]), asset=rng.choice(["BTC", "ETH"]), **kw)
        events.append(e)
        if rng.random() < 0.05:
            events.append(events[rng.randint(max(0, i - 60), i)])
    ref_rows, ref_outcomes, _, states = reference(events)
    engine = fk.BatchFeatureEngine(capacity=1)
    X, outcomes, _ = run_batches(engine, events, [1, 3, 64, 1000])
    assert np.array_equal(outcomes, ref_outcomes)
    assert np.array_equal(X, ref_rows)
    assert_same_states(engine, states)


def test_unknown_type_leaves_engine_unchanged():
    engine = fk.BatchFeatureEngine()
    with pytest.raises(KeyError):
        engine.process([ev(1, T0, acct="new"), ev(2, T0, "refund", acct="other")])
    assert len(engine) == 0 and engine.state("new") is None


# -- hashes and serialisation -------------------------------------------------------

@pytest.mark.parametrize("texts", [
    ["e1", "", "x" * 5000, "y" * 70_000, "ünïcødé-✓", "BTC"],
    ["with\x00nul", "", "a"],  # a NUL inside a string: the Python fallback
])
def test_string_hashes_equal_python(texts):
    engine = fk.BatchFeatureEngine()
    events = [Event(t or "id", T0, "a", "trade", t, 1.0, 1.0, "buy", 1.0, t, t, t, t) for t in texts]
    _, _, _, _, _, _, _, key, dev, ip, country, cp, asset = engine.encode(events)
    assert key.view(np.uint64).tolist() == [event_key(t or "id") for t in texts]
    for h in (dev, ip, country, cp):
        assert h.tolist() == [_h(t) if t else -1 for t in texts]
    assert asset.tolist() == [_h(t) for t in texts]


def test_bytes_round_trip_of_odd_states():
    st = AccountState()
    st.last_ts, st.mu, st.var, st.balance, st.cp_total = 1.5, -0.0, float("inf"), 5e-324, float("nan")
    st.devices, st.ips = [0, 2**32 - 1], list(range(MAX_IPS))
    st.countries, st.addresses = [7] * MAX_COUNTRIES, list(range(MAX_ADDRESSES))
    st.cp_keys, st.cp_weights = [1, 2, 3], [0.1, -0.0, 1e300]
    st.recent_ids = [2**64 - 1, 0, 2**63, 12345]
    engine = fk.BatchFeatureEngine()
    engine.set_state("odd", st)
    blob = st.to_bytes()
    assert engine.state_bytes(["odd", "unknown"]) == {"odd": blob}
    engine.load_bytes("copy", blob)
    assert engine.state_bytes(["copy"])["copy"] == blob
    assert engine.state("copy").to_bytes() == blob
    f, s = fk.to_arrays(st)
    assert fk.from_arrays(f, s).to_bytes() == blob


def test_load_bytes_refuses_foreign_bytes():
    engine = fk.BatchFeatureEngine()
    good = update(None, ev(1, T0))[0]
    engine.set_state("a", good)
    blob = good.to_bytes()
    big = AccountState()
    big.devices = list(range(MAX_DEVICES + 1))
    for bad in (b"", blob[:10], b"\0\0\0\0" + blob[4:], blob + b"x", big.to_bytes()):
        with pytest.raises(StateFormatError):
            engine.load_bytes("b", bad)
        with pytest.raises(StateFormatError):
            engine.load_bytes("a", bad)
    assert "b" not in engine and engine.state("a") == good
    with pytest.raises(StateFormatError):
        engine.set_state("c", big)
    assert "c" not in engine


def test_compiled_constants_are_current():
    fk.ensure_compiled()
    assert fk._compiled_constants() == fk._EXPECTED_CONSTANTS
