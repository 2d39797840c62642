"""The faust tuning: the record delivery without a task per record keeps ``wait_first``'s outcomes."""

import asyncio
import warnings

import pytest
from mode import Service

from stream.runners.faust_tuning import inline_wait_first


class Consumer(Service):
    """A mode service with the patched ``wait_first`` (faust's consumer is one)."""


Consumer.wait_first = inline_wait_first(Service.wait_first)


def run(coro):
    return asyncio.run(coro)


def test_a_callback_that_does_not_wait_runs_without_a_task_and_gives_its_result():
    async def go():
        consumer = Consumer()
        suspend = asyncio.Event()
        delivered = []

        async def callback(x):
            delivered.append(x)
            return x * 2

        made = []
        loop = asyncio.get_running_loop()

        def factory(loop, coro, **kw):
            made.append(coro)
            return asyncio.Task(coro, loop=loop, **kw)

        loop.set_task_factory(factory)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the unstarted suspend wait is closed, not left unawaited
            result = await consumer.wait_first(callback(21), suspend.wait())
        loop.set_task_factory(None)
        return result, delivered, len(made)

    result, delivered, tasks = run(go())
    assert delivered == [21]
    assert result.results == [42] and not result.stopped
    assert tasks == 0  # faust's own wait_first makes four (and cancels three)


def test_a_callback_that_waits_is_given_up_when_flow_is_suspended():
    async def go():
        consumer = Consumer()
        suspend, room = asyncio.Event(), asyncio.Event()
        done = []

        cancelled = []

        async def callback():
            try:
                await room.wait()  # a full queue
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            done.append(True)

        asyncio.get_running_loop().call_later(0.05, suspend.set)
        result = await consumer.wait_first(callback(), suspend.wait())
        room.set()
        await asyncio.sleep(0.01)
        return result, done, cancelled

    result, done, cancelled = run(go())
    assert done == []                      # given up, as faust's own wait_first gives it up
    assert cancelled == [True]             # by cancelling the callback where it waited
    assert result.results == [True]        # the suspend event's wait is the winner


def test_a_callback_that_waits_and_finishes_gives_its_result():
    async def go():
        consumer = Consumer()
        suspend, room = asyncio.Event(), asyncio.Event()

        async def callback():
            await room.wait()
            await asyncio.sleep(0.001)  # and waits once more: each wait resumes it
            return "put"

        asyncio.get_running_loop().call_later(0.02, room.set)
        return await consumer.wait_first(callback(), suspend.wait())

    result = run(go())
    assert "put" in result.results and not result.stopped


def test_an_error_in_the_callback_is_raised():
    async def go():
        consumer = Consumer()

        async def callback():
            raise ValueError("cannot decode")

        await consumer.wait_first(callback(), asyncio.Event().wait())

    with pytest.raises(ValueError, match="cannot decode"):
        run(go())


def test_an_error_after_the_callback_waited_is_raised():
    async def go():
        consumer = Consumer()
        room = asyncio.Event()

        async def callback():
            await room.wait()
            raise ValueError("producer buffer closed")

        asyncio.get_running_loop().call_later(0.01, room.set)
        await consumer.wait_first(callback(), asyncio.Event().wait())

    with pytest.raises(ValueError, match="producer buffer closed"):
        run(go())


def test_the_producer_buffer_size_reads_the_setting_once_and_counts_what_waits():
    import faust

    from stream.runners.faust_tuning import read_producer_mode_once

    read_producer_mode_once()

    async def go():
        app = faust.App("tuning-test", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
        buffer = app.producer.buffer
        assert buffer.size == 0
        reads = []
        conf_type = type(app.conf)
        original = conf_type.__getattribute__

        def counting(self, name):
            if name == "producer_threaded":
                reads.append(name)
            return original(self, name)

        conf_type.__getattribute__ = counting
        try:
            buffer.pending.put_nowait("a")
            buffer.pending.put_nowait("b")
            sizes = [buffer.size for _ in range(5)]
        finally:
            conf_type.__getattribute__ = original
        return sizes, reads

    sizes, reads = run(go())
    assert sizes == [2] * 5  # the messages waiting to be produced
    assert reads == []       # read once already (by the first size), not on every call
