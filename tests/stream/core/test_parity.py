"""One feature path: offline rows (training) equal online rows (the worker) bit for bit,
for a stream delivered out of order and with duplicates, through batches and restarts."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest

from stream.core.pipeline import Pipeline
from stream.events.schema import event_from_dict
from stream.features.layout import FEATURE_INDEX
from stream.scoring.student import load_student
from tests.doubles import MemoryStore
from tests.stream.core.test_pipeline import PARTITIONS, partition_of, run_batches, to_records
from training.dataset import build_features
from training.simulate import deliver


@pytest.fixture(scope="module")
def delivery(small_history):
    """The small history delivered harder than the default: 5 % late, 3 % twice."""
    return deliver(small_history, 5, late_fraction=0.05, duplicate_fraction=0.03)


def _online(student, delivery, rng):
    """Per partition: the applied rows in order, the duplicate count, the late dead letters.
    Few cached accounts and frequent restarts: states often go through their stored bytes."""
    store = MemoryStore()
    rows, dups, late = defaultdict(list), defaultdict(int), set()
    for p, result in run_batches(lambda: Pipeline(student, store, max_cached_accounts=50), store,
                                 to_records(delivery), rng, restart_every=5, max_batch=500):
        if result.scored:
            rows[p].extend(result.features)
        dups[p] += result.duplicates
        late.update((d.partition, d.offset, d.reason) for d in result.dead if d.field == "ts")
    return rows, dups, late


def test_offline_rows_equal_online_rows_for_late_and_duplicate_delivery(models, delivery):
    offline = build_features([event_from_dict(e) for e in delivery])
    # The delivery exercises every admission path: duplicates skipped, events beyond the
    # tolerance refused, and late events within it applied with the late flag.
    assert len(offline.duplicates) > 100 and len(offline.late) > 0
    assert offline.X[:, FEATURE_INDEX["late"]].sum() > 100

    where = {}  # event index -> (partition, offset), as to_records assigns them
    counters: dict[int, int] = defaultdict(int)
    for i, e in enumerate(delivery):
        p = partition_of(e["account_id"])
        where[i] = (p, counters[p])
        counters[p] += 1

    rows, dups, late = _online(load_student(models["student"]), delivery, random.Random(4))
    by_partition = defaultdict(list)
    for k, i in enumerate(offline.applied.tolist()):
        by_partition[where[i][0]].append(offline.X[k])
    for p in range(PARTITIONS):
        assert np.array_equal(np.array(rows[p]), np.array(by_partition[p]))  # bit for bit
    offline_dups = defaultdict(int)
    for i in offline.duplicates:
        offline_dups[where[i][0]] += 1
    assert dict(dups) == {p: offline_dups[p] for p in dups} and sum(dups.values()) == len(offline.duplicates)
    assert late == {(*where[i], reason) for i, reason in offline.late}
