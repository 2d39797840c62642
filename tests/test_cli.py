"""Bad input on the operational commands: one clear line, exit status 2, no traceback."""

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
])
def test_operational_commands_fail_cleanly(capsys, monkeypatch, tmp_path, env, argv, words):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, monkeypatch, env, *argv)
    assert code == 2
    assert words in err and "Traceback" not in err
    assert "s3cret" not in err
