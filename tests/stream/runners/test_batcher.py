"""The faust runner's batcher, in memory: how batches are cut, write order, acks after writes."""

from __future__ import annotations

import asyncio
import random

from stream.runners.batcher import Batcher
from tests.stream.core.test_worker import _snapshot, make_core, records


class Harness:
    """A batcher over a real WorkerCore and MemoryStore whose writes can be held."""

    def __init__(self, core, *, max_items: int, buffered=lambda item: False, max_wait_s: float = 10.0) -> None:
        self.core = core
        self.gate = asyncio.Event()
        self.gate.set()
        self.acked: list = []
        self.errors: list[BaseException] = []
        self.log: list[tuple] = []
        persist = core.persist

        async def held_persist(prepared):
            await self.gate.wait()
            out = await persist(prepared)
            self.log.append(("stored", sum(len(group) for group, _, _ in prepared)))
            return out
        core.persist = held_persist

        async def ack(items):
            self.log.append(("acked", len(items)))
            self.acked.extend(items)

        self.batcher = Batcher(core, max_items=max_items, max_wait_s=max_wait_s, buffered=buffered, to_record=lambda r: r, ack=ack,
                               on_error=self.errors.append)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)
        await self.batcher.written()


def test_records_arriving_during_a_write_become_the_next_batch(models, small_history, tmp_path):
    """Caught up (nothing buffered): the first record is a batch of its own at once; the
    ones that arrive while it is written gather into one batch, cut when the write ends."""
    core, _, store = make_core(models, tmp_path)
    recs = records(small_history[:60])

    async def run():
        h = Harness(core, max_items=1000)
        flusher = asyncio.ensure_future(h.batcher.run())
        h.gate.clear()                      # hold the writes
        await h.batcher.add(recs[0])
        await asyncio.sleep(0.01)          # the flusher takes it and starts writing
        for r in recs[1:]:
            await h.batcher.add(r)
        await asyncio.sleep(0.01)
        assert h.acked == []                # nothing acknowledged before it is stored
        assert list(h.batcher.sizes) == [1]       # the rest waits for the write in flight
        h.gate.set()
        await asyncio.sleep(0.05)
        await h.settle()
        flusher.cancel()
        return h

    h = asyncio.run(run())
    assert list(h.batcher.sizes) == [1, 59]
    assert h.log == [("stored", 1), ("acked", 1), ("stored", 59), ("acked", 59)]
    assert h.acked == recs and h.errors == []
    assert store.offsets[f"{recs[0].topic}:0"] == recs[-1].offset


def test_a_backlog_fills_batches_up_to_max_items(models, small_history, tmp_path):
    """While the source holds more records, a batch is cut only when full; add() waits
    (back-pressure) until a full batch is taken."""
    core, _, _ = make_core(models, tmp_path)
    recs = records(small_history[:250])
    last = recs[-1]

    async def run():
        h = Harness(core, max_items=100, buffered=lambda r: r is not last)
        flusher = asyncio.ensure_future(h.batcher.run())
        for r in recs:
            await h.batcher.add(r)
            assert len(h.batcher._pending) <= 100
        await asyncio.sleep(0.05)
        await h.settle()
        flusher.cancel()
        return h

    h = asyncio.run(run())
    assert list(h.batcher.sizes) == [100, 100, 50]
    assert h.acked == recs and h.errors == []


def test_batches_cut_anywhere_end_in_the_state_of_one_sequential_pass(models, small_history, tmp_path):
    """Random cut points, two partitions, writes held at random: the same states, offsets
    and alerts as handling all records in one call."""
    evs = small_history[:3000]
    recs = records(evs[:1500], partition=0) + records(evs[1500:], partition=1)
    recs.sort(key=lambda r: r.offset)  # interleave the partitions, each in offset order
    ref, _, ref_store = make_core(models, tmp_path)
    asyncio.run(ref.handle(recs))

    core, _, store = make_core(models, tmp_path)
    rng = random.Random(5)

    async def run():
        # The source runs dry at random, and for good after the last record.
        h = Harness(core, max_items=400, buffered=lambda r: r is not recs[-1] and rng.random() < 0.97)
        flusher = asyncio.ensure_future(h.batcher.run())
        for r in recs:
            if rng.random() < 0.02:
                h.gate.clear()
                asyncio.get_running_loop().call_later(rng.random() * 0.01, h.gate.set)
            await h.batcher.add(r)
            if rng.random() < 0.05:
                await asyncio.sleep(0)
        h.gate.set()
        await asyncio.sleep(0.05)
        await h.settle()
        flusher.cancel()
        return h

    h = asyncio.run(run())
    assert h.errors == []
    assert len(h.batcher.sizes) > 5 and sum(h.batcher.sizes) == len(recs)
    assert h.acked == recs  # in batch order, each batch in arrival order
    assert _snapshot(store) == _snapshot(ref_store)
    assert ref_store.all_alerts()  # the comparison covers alerts, not only empty sets


def test_an_error_in_the_core_goes_to_on_error_and_nothing_is_acked(models, small_history, tmp_path):
    core, _, _ = make_core(models, tmp_path)
    recs = records(small_history[:10])

    async def broken(prepared):
        raise RuntimeError("a bug")
    core.persist = broken

    async def run():
        acked: list = []
        errors: list = []

        async def ack(items):
            acked.extend(items)
        batcher = Batcher(core, max_items=100, max_wait_s=10.0, buffered=lambda r: False, to_record=lambda r: r, ack=ack,
                          on_error=errors.append)
        flusher = asyncio.ensure_future(batcher.run())
        for r in recs:
            await batcher.add(r)
        await asyncio.sleep(0.05)
        flusher.cancel()
        return acked, errors

    acked, errors = asyncio.run(run())
    assert acked == []
    assert errors and isinstance(errors[0], RuntimeError)


def test_a_batch_is_cut_after_max_wait_even_if_the_source_claims_more(models, small_history, tmp_path):
    """A source may stop delivering while it still holds records (faust pauses its streams
    during a rebalance): the batch is cut after max_wait_s, not left waiting unacked."""
    core, _, _ = make_core(models, tmp_path)
    recs = records(small_history[:10])

    async def run():
        h = Harness(core, max_items=1000, buffered=lambda r: True, max_wait_s=0.05)
        flusher = asyncio.ensure_future(h.batcher.run())
        for r in recs:
            await h.batcher.add(r)
        await asyncio.sleep(0.01)
        assert h.acked == []  # still gathering
        await asyncio.sleep(0.2)
        await h.settle()
        flusher.cancel()
        return h

    h = asyncio.run(run())
    assert list(h.batcher.sizes) == [10] and h.acked == recs


def test_drain_writes_and_acks_everything_added_so_far(models, small_history, tmp_path):
    """Before partitions are revoked, what was taken from them is written and acked."""
    core, _, store = make_core(models, tmp_path)
    recs = records(small_history[:30])

    async def run():
        h = Harness(core, max_items=1000, buffered=lambda r: True, max_wait_s=10.0)
        flusher = asyncio.ensure_future(h.batcher.run())
        for r in recs:
            await h.batcher.add(r)
        await asyncio.wait_for(h.batcher.drain(), 5)
        flusher.cancel()
        return h

    h = asyncio.run(run())
    assert h.acked == recs
    assert store.offsets[f"{recs[0].topic}:0"] == recs[-1].offset


def test_more_buffered_reads_the_agent_queue_then_the_high_watermark():
    """The faust runner's cut signal: queued events, or records the consumer knows of."""
    import asyncio as aio
    from types import SimpleNamespace

    from stream.runners.faust_app import MoreBuffered

    class Consumer:
        def __init__(self, high):
            self.high = high
            self.calls = 0

        def highwater(self, tp):
            self.calls += 1
            if isinstance(self.high, Exception):
                raise self.high
            return self.high

    def event(offset, partition=0):
        return SimpleNamespace(message=SimpleNamespace(tp=("t", partition), offset=offset))

    empty, queued = aio.Queue(), aio.Queue()
    queued.put_nowait("next")
    assert MoreBuffered(queued, Consumer(42))(event(41))                 # an event waits in the queue
    assert MoreBuffered(empty, Consumer(50))(event(41))                  # announced, not delivered yet
    assert not MoreBuffered(empty, Consumer(42))(event(41))              # offset 41 is the last one
    assert not MoreBuffered(empty, Consumer(None))(event(41))            # not fetched yet
    assert not MoreBuffered(empty, Consumer(AssertionError("Partition is not assigned")))(event(41))

    # A known high watermark beyond the event answers without asking the consumer again;
    # at the known end it asks again (the watermark may have moved); per partition.
    consumer = Consumer(50)
    hint = MoreBuffered(empty, consumer)
    assert hint(event(10)) and consumer.calls == 1
    assert hint(event(48)) and consumer.calls == 1
    assert not hint(event(49)) and consumer.calls == 2                    # 50 is the end: asked, still the end
    consumer.high = 60
    assert hint(event(49)) and consumer.calls == 3                        # asked again: moved on
    assert not hint(event(59)) and consumer.calls == 4
    consumer.high = 5
    assert not hint(event(4, partition=1)) and consumer.calls == 5        # partition 1 has its own
    # A revoked partition's watermark is forgotten: it is asked again when it comes back.
    consumer.high = AssertionError("Partition is not assigned")
    hint.forget([("t", 0)])
    assert not hint(event(10))
