"""What txwatch changes in faust's consumer, and why (each measured with ``bench stream``).

The worker and the no-op agent of ``txwatch bench stream`` apply the same tuning, so that
baseline stays faust's own floor under the worker's settings.

* :func:`set_fetch_wait`: faust builds its aiokafka consumer with a fixed 1.5 s fetch wait.
* :func:`deliver_in_one_task`: faust hands every fetched record to the agents through
  ``Service.wait_first(callback(message), suspend_flow.wait())``, which makes four tasks
  per record (the callback, and waits on the flow-suspend, stopped and crashed events)
  and cancels three of them again: the largest single share of faust's per-record cost.
"""

from __future__ import annotations

import asyncio


def set_fetch_wait(ms: int) -> None:
    """faust builds its aiokafka consumer with a fixed ``fetch_max_wait_ms=1500``.

    Apache Kafka answers a fetch as soon as data arrives, so there the wait only sets how
    often a caught-up partition is polled; on the embedded broker it also adds to latency.
    Too short costs throughput: every caught-up partition is fetched again each wait
    (both measured in ``docs/benchmarks.md``). The wait is applied to the consumer faust
    creates, before it starts.
    """
    from faust.transport.drivers import aiokafka as driver

    cls = driver.AIOKafkaConsumerThread
    original = getattr(cls, "_txwatch_original_create", cls._create_worker_consumer)

    def create(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    cls._txwatch_original_create = original
    cls._create_worker_consumer = create


def deliver_in_one_task() -> None:
    """Hand each fetched record to the agents in one task, not four.

    faust's consumer delivers each record with ``wait_first(callback(message),
    suspend_flow.wait())``: run the callback, but give it up if flow is suspended (a
    rebalance) or the consumer stops while it waits. The callback almost never waits (it
    decodes the record and puts it in the agents' queues), so it is started as one task
    and given one turn of the event loop first; only a callback still waiting after that
    (a full queue, flow suspended, a full producer buffer) goes on to faust's own
    ``wait_first``, with the same outcome as before: it is given up if flow is suspended
    or the consumer stops. Errors are raised as ``wait_first`` raises them.
    """
    from faust.transport.drivers import aiokafka as driver

    cls = driver.Consumer
    if getattr(cls, "_txwatch_one_task", False):
        return
    cls.wait_first = one_task_wait_first(cls.wait_first)
    cls._txwatch_one_task = True


def one_task_wait_first(original):
    """``Service.wait_first`` that runs a first coroutine argument as one task for one turn
    of the loop, and calls ``original`` only if it is still waiting then."""
    from mode.services import WaitResults

    async def wait_first(self, *coros, timeout=None):
        first = coros[0] if coros else None
        if not asyncio.iscoroutine(first) or timeout is not None or self._stopped.is_set() or self._crashed.is_set():
            return await original(self, *coros, timeout=timeout)
        task = asyncio.ensure_future(first)
        await asyncio.sleep(0)  # the task was scheduled first: it has had its turn
        if not task.done():
            return await original(self, task, *coros[1:])
        for other in coros[1:]:
            if asyncio.iscoroutine(other):
                other.close()  # never started: nothing to cancel
        return WaitResults([first], [task.result()], False)

    return wait_first
