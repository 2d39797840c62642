"""A second worker joins a group mid-stream: partitions move between two running workers
(each runner's rebalance path, the faust agent's drop of events fetched before the
rebalance included), and the result is exactly that of one uninterrupted run."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.conftest import (
    alert_ids, offline, processed, produce_events, start_worker, stop_worker, stored_states, wait_processed,
)

pytestmark = pytest.mark.integration


def scored(log: str) -> int:
    """The largest ``events=`` count in a worker's progress lines."""
    return max((int(n) for n in re.findall(r"events=(\d+)", log)), default=0)


@pytest.mark.parametrize("runner", ["faust", "plain"])
def test_a_worker_joining_mid_stream_loses_and_duplicates_nothing(settings, models, small_history, tmp_path, runner):
    events = small_history[:30_000]
    s = settings
    produce_events(s, events[:15_000])
    first = start_worker(s, runner, tmp_path / "first.log")
    second = None
    try:
        deadline = time.monotonic() + 120
        while processed(s) < 3_000:
            assert first.poll() is None and time.monotonic() < deadline, "the first worker did not start scoring"
            time.sleep(0.05)
        second = start_worker(s, runner, tmp_path / "second.log")  # joins: the group rebalances
        rest = events[15_000:]
        for i in range(0, len(rest), 750):  # the stream goes on for ~20 s: it moves to both workers
            produce_events(s, rest[i:i + 750])
            time.sleep(1.0)
        wait_processed(s, len(events), timeout=180, proc=first)
        assert second.poll() is None, "the second worker exited"
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)
    assert scored((tmp_path / "second.log").read_text()) > 0, "the second worker never got a partition"
    expected, states = offline(models, events)
    got = alert_ids(s)
    assert len(got) == len(set(got)), "an alert was written twice"
    assert set(got) == expected
    assert stored_states(s) == states
