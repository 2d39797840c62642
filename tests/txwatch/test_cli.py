"""Bad input on the operational commands: one clear line, exit status 2, no traceback."""

import orjson
import pytest

from txwatch.cli import main


def run(capsys, monkeypatch, env, *argv):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("env,argv,words", [
    ({"TXWATCH_KAFKA_URL": "kafka://127.0.0.1:1"}, ["replay", "--events", "missing.jsonl"], "missing.jsonl: no such file"),
    ({}, ["replay", "--events", "x.jsonl"], "set TXWATCH_KAFKA_URL"),
    ({"TXWATCH_REDIS_URL": "redis://127.0.0.1:1/0"}, ["alerts"], "cannot reach Redis at redis://127.0.0.1:1/0"),
    ({"TXWATCH_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}, ["alerts"], "redis://:***@127.0.0.1:1/0"),
    ({}, ["worker"], "needs TXWATCH_KAFKA_URL and TXWATCH_REDIS_URL"),
    ({"TXWATCH_PARTITIONS": "0"}, ["worker"], "TXWATCH_PARTITIONS"),
    ({}, ["bench", "models", "--events", "e.jsonl", "--model", "nowhere"], "does not exist"),
    ({}, ["repartition", "--source", "a"], "set TXWATCH_KAFKA_URL"),
    ({}, ["bench", "soak", "--events", "missing.jsonl", "--model", "nowhere"], "does not exist"),
    ({"TXWATCH_LOG_LEVEL": "loud"}, ["worker"], "TXWATCH_LOG_LEVEL"),
    ({"TXWATCH_DEAD_LETTER_MAX_BYTES": "10"}, ["worker"], "TXWATCH_DEAD_LETTER_MAX_BYTES"),
    # 0 would make a worker on the embedded broker consume nothing (Tansu answers a 0 ms
    # fetch with no records; seen in a probe: nothing visible within 2 s, 100 of 100 times).
    ({"TXWATCH_FETCH_MAX_WAIT_MS": "0"}, ["worker"], "TXWATCH_FETCH_MAX_WAIT_MS"),
    ({"TXWATCH_FAILPOINT": "exit-after-redis-commit:soon"}, ["worker"], "TXWATCH_FAILPOINT"),
    ({"TXWATCH_SHUTDOWN_TIMEOUT_S": "0"}, ["worker"], "TXWATCH_SHUTDOWN_TIMEOUT_S"),
])
def test_operational_commands_fail_cleanly(capsys, monkeypatch, tmp_path, env, argv, words):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, monkeypatch, env, *argv)
    assert code == 2
    assert words in err and "Traceback" not in err
    assert "s3cret" not in err


def test_soak_refuses_a_file_without_usable_events(capsys, monkeypatch, tmp_path, models):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('garbage\n{"x": 1}\n')
    code, out, err = run(capsys, monkeypatch, {}, "bench", "soak", "--events", bad, "--model", models["student"])
    assert code == 2 and "no events with an integer ts and an account_id" in err and "Traceback" not in err


def test_soak_refuses_a_non_positive_length(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "soak", "--events", "e.jsonl", "--model", "m", "--seconds", "-1"])
    assert exc.value.code == 2 and "must be > 0" in capsys.readouterr().err


def test_simulate_creates_the_output_directory(capsys, monkeypatch, tmp_path):
    """The README's first command writes to runs/, which a fresh clone does not have."""
    out = tmp_path / "runs" / "nested" / "events.jsonl"
    code, _, err = run(capsys, monkeypatch, {}, "simulate", "--events", 500, "--accounts", 20, "--days", 2,
                       "--out", out)
    assert code == 0, err
    assert 480 <= len(out.read_bytes().splitlines()) <= 500  # "a few less" than asked (simulate's docstring)


def test_simulate_into_an_unwritable_place_fails_cleanly(capsys, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = run(capsys, monkeypatch, {}, "simulate", "--events", 500, "--accounts", 20, "--days", 2,
                       "--out", blocker / "events.jsonl")
    assert code == 2
    assert err.startswith("txwatch: error:") and "a-file" in err and "Traceback" not in err


@pytest.mark.parametrize("flag,value", [("--late-fraction", "1.5"), ("--duplicate-fraction", "-0.1"),
                                        ("--late-fraction", "lots")])
def test_simulate_refuses_a_delivery_fraction_outside_0_to_1(capsys, tmp_path, flag, value):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--events", "500", "--out", str(tmp_path / "e.jsonl"), flag, value])
    assert exc.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "e.jsonl").exists()


def test_simulate_writes_late_and_duplicate_deliveries_by_default(capsys, monkeypatch, tmp_path):
    out = tmp_path / "events.jsonl"
    code, _, err = run(capsys, monkeypatch, {}, "simulate", "--events", 20_000, "--accounts", 200, "--days", 5,
                       "--out", out)
    assert code == 0, err
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    ids = [e["event_id"] for e in events]
    assert len(ids) > len(set(ids))  # some events delivered twice
    assert any(b["ts"] < a["ts"] for a, b in zip(events, events[1:]))  # some out of event-time order
