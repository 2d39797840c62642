"""What txwatch changes in faust's consumer, and why (each measured with ``bench stream``).

The worker and both no-op agents of ``txwatch bench stream`` apply the consumer tuning
(the first three below), so those baselines stay faust's own floor under the worker's
settings; the last two are how the worker's agent (and the no-op agent that takes events
as it does) takes and acknowledges events.

* :func:`set_fetch_wait`: faust builds its aiokafka consumer with a fixed 1.5 s fetch wait.
* :func:`deliver_inline`: faust hands every fetched record to the agents through
  ``Service.wait_first(callback(message), suspend_flow.wait())``, which makes four tasks
  per record (the callback, and waits on the flow-suspend, stopped and crashed events)
  and cancels three of them again: the largest single share of faust's per-record cost.
  txwatch runs the callback inline instead, and makes a task only of one that waits.
* :func:`read_producer_mode_once`: the conductor's per-record check of the producer's
  buffer read a setting through faust's settings descriptors every time.
* :func:`take_events`: every event waiting in the agent's queue at once, not a loop turn
  and the sensors per event through faust's stream iterator.
* :func:`batch_acker`: a batch's events acknowledged under one ``ack_lock``.
"""

from __future__ import annotations

import asyncio
import types


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


def deliver_inline() -> None:
    """Hand each fetched record to the agents without a task, unless it has to wait.

    faust's consumer delivers each record with ``wait_first(callback(message),
    suspend_flow.wait())``: run the callback, but give it up if flow is suspended (a
    rebalance) or the consumer stops while it waits. The callback almost never waits (it
    decodes the record and puts it in the agents' queues), so it is run here, in the
    consumer's own task, up to its first wait; only a callback that does wait (a full
    queue, flow suspended, a full producer buffer) goes on, as one task, to faust's own
    ``wait_first``, with the same outcome as before: it is given up if flow is suspended or
    the consumer stops. Errors are raised as ``wait_first`` raises them.

    No task per record matters more than it seems: besides the task and the turn of the
    event loop it costs, creating a task without naming its loop asks asyncio for the
    running loop, which in CPython 3.11 makes a ``getpid`` system call, and system calls
    are slow in sandboxed containers (``docs/benchmarks.md``).
    """
    from faust.transport.drivers import aiokafka as driver

    cls = driver.Consumer
    if getattr(cls, "_txwatch_inline", False):
        return
    cls.wait_first = inline_wait_first(cls.wait_first)
    cls._txwatch_inline = True


def inline_wait_first(original):
    """``Service.wait_first`` that runs a first coroutine argument inline up to its first
    wait, and calls ``original`` (with the rest of it as a task) only if it does wait."""
    from mode.services import WaitResults

    async def wait_first(self, *coros, timeout=None):
        first = coros[0] if coros else None
        if not asyncio.iscoroutine(first) or timeout is not None or self._stopped.is_set() or self._crashed.is_set():
            return await original(self, *coros, timeout=timeout)
        try:
            waiting_on = first.send(None)
        except StopIteration as done:
            _close(coros[1:])
            await asyncio.sleep(0)  # the agents' turn: they take the record before the next is put
            return WaitResults([first], [done.value], False)
        except BaseException:
            _close(coros[1:])
            raise
        task = self.loop.create_task(_resume(first, waiting_on))
        return await original(self, task, *coros[1:])

    return wait_first


def _close(coros) -> None:
    """Close coroutines that were never started (nothing to cancel, nothing left unawaited)."""
    for coro in coros:
        if asyncio.iscoroutine(coro):
            coro.close()


@types.coroutine
def _resume(coro, waiting_on):
    """The rest of ``coro``, which was started by hand and is waiting on ``waiting_on``
    (what its first ``send`` yielded): what ``await coro`` would have done from there on,
    so a task can drive it (and cancel it: the cancellation is thrown into ``coro``)."""
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - a cancellation or error for the coroutine
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = coro.send(sent)
            except StopIteration as done:
                return done.value


def batch_acker(app):
    """``ack(events)``: acknowledge a batch's events at once, as ``Stream.ack`` acknowledges
    each (the message's refcount, then the consumer's commit bookkeeping for its offset, and
    the ``on_message_out`` sensor once a message is fully acknowledged), with faust's
    ``ack_lock`` taken once per batch instead of three times per event. ``Stream.ack``'s
    other call, the ``on_stream_event_out`` sensor, is left out: faust passes it no state
    from ``Stream.ack``, and its monitor does nothing without one."""
    from faust.types.tuples import ack_lock

    def ack(events) -> None:
        message_out = app.sensors.on_message_out
        with ack_lock:  # reentrant: Message.ack and Consumer.ack take it again, cheaply
            for event in events:
                if event.ack():
                    message = event.message
                    message_out(message.tp, message.offset, message)

    return ack


def read_producer_mode_once() -> None:
    """faust's conductor asks, for every fetched record, whether the producer's buffer is
    full (``ProducerBuffer.wait_until_ebb``), and the buffer's ``size`` reads the
    ``producer_threaded`` setting through faust's settings descriptors each time (several
    attribute hooks, about 3 us per record in a profile of the worker). The setting does
    not change while the app runs: it is read on the first call and kept on the buffer.
    ``size`` is otherwise faust's own: the length of the queue its sends wait in."""
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer, "_txwatch_mode_once", False):
        return

    def size(self) -> int:
        threaded = self.__dict__.get("_txwatch_threaded")
        if threaded is None:
            threaded = self.__dict__["_txwatch_threaded"] = bool(self.app.conf.producer_threaded)
        if threaded:
            return len(self.queue._queue) if self.queue else 0
        return len(self.pending._queue)

    ProducerBuffer.size = property(size, doc=ProducerBuffer.size.__doc__)
    ProducerBuffer._txwatch_mode_once = True


async def take_events(app, stream, handle, ack) -> None:
    """Hand each event of an agent's stream to ``handle`` (``await handle(event)``), taking
    every event already in the agent's queue at once, until cancelled.

    faust's stream iterator gives the event loop a turn before every event (each turn a
    ``select`` system call) and runs its sensors per event. This reads the agent's queue
    as the iterator does (its fast path, which faust keeps behind an opt-in setting) and
    applies the iterator's checks: an event from before the latest rebalance, or taken
    while flow is suspended, is acknowledged and dropped (``ack([event])``), as faust drops
    it; a message of an acking topic is tracked as unacknowledged until it is acked (what
    faust's rebalance waits on); errors the queue holds are raised. No other stream
    features (processors, ``stream.current_event``) are served: the agent takes the events
    itself, and acks them with ``ack`` (the stream's ``enable_acks`` off).
    """
    queue = stream.channel.queue
    errors = queue._errors
    consumer = app.consumer
    acking = app.topics._acking_topics
    add_unacked = consumer._unacked_messages.add
    message_in = app.sensors.on_message_in
    flow = app.flow_control
    while True:
        if errors:
            raise errors.popleft()
        event = await queue.get()
        while True:
            message = event.message
            if not flow.is_active() or message.generation_id != app.consumer_generation_id:
                ack([event])
            else:
                if message.topic in acking and not message.tracked:
                    message.tracked = True
                    add_unacked(message)
                    message_in(message.tp, message.offset, message)
                await handle(event)
            if errors or queue.empty():
                break
            event = queue.get_nowait()
