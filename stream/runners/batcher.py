"""Batches cut from records that arrive one at a time (the faust runner's stream).

faust hands an agent one event at a time. :class:`Batcher` gathers them into batches for
:class:`stream.core.worker.WorkerCore`, with no timer and no fixed window:

* a batch is cut as soon as the source has nothing more buffered (the worker is caught
  up, so an event waits for nothing), or when it holds ``max_items``;
* one batch is written at a time, and the next one is computed while it is; records that
  arrive meanwhile gather into the batch after. Batches therefore grow with the load by
  themselves: one event when the worker is idle, ``max_items`` while it catches up with
  a backlog (natural batching, as in a database's group commit);
* when ``max_items`` records wait and the previous batch is not yet taken, :meth:`add`
  waits: the source's own buffer fills and its consumer pauses (back-pressure);
* a batch's records are acknowledged (``ack``) only once the batch is durably written and
  its alerts and dead letters are on Kafka, so Kafka offsets are never committed ahead of
  either; the next batch's write waits only for the previous one's Redis commit.

faust's own ``stream.take(n, within)`` stops pulling events while the agent's body runs
and then waits out ``within`` on every batch: a catching-up worker took small batches
that way, and their per-batch costs cut its rate (measured with ``bench stream``,
``docs/benchmarks.md``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable, Generic, TypeVar

from stream.core.ports import Record
from stream.core.worker import WorkerCore, group_by_partition

T = TypeVar("T")


class Batcher(Generic[T]):
    """Feed items with :meth:`add` while :meth:`run` takes, computes and writes batches."""

    def __init__(self, core: WorkerCore, *, max_items: int, max_wait_s: float, buffered: Callable[[T], bool],
                 to_record: Callable[[T], Record], ack: Callable[[list[T]], Awaitable[None]],
                 on_error: Callable[[BaseException], None]) -> None:
        """``buffered(item)`` tells whether the source holds items after ``item``. A batch
        is cut at the latest ``max_wait_s`` after its first item arrived, even if the source
        claims more (it may pause delivery, e.g. during a rebalance). ``on_error`` gets any
        exception from computing or writing (a bug: bad data is dead-lettered inside the
        core, Redis outages are retried there)."""
        self.core = core
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self.buffered = buffered
        self.to_record = to_record
        self.ack = ack
        self.on_error = on_error
        self._pending: list[T] = []
        self._first_at = 0.0              # loop time the oldest pending item arrived
        self._arrived = asyncio.Event()   # pending items exist
        self._ready = asyncio.Event()     # cut the batch now
        self._taken = asyncio.Event()     # the flusher took the pending items
        self._writing: asyncio.Task | None = None
        self._acking: deque[asyncio.Future] = deque(maxlen=64)  # acks waiting for Kafka, newest last
        self._added = self._acked = 0
        self._failed = False
        self.sizes: deque[int] = deque(maxlen=1000)  # sizes of the latest batches

    async def add(self, item: T) -> None:
        """Queue one item; waits while ``max_items`` are queued and not yet taken."""
        if not self._pending:
            self._first_at = asyncio.get_running_loop().time()
            self._arrived.set()
        self._pending.append(item)
        self._added += 1
        if len(self._pending) >= self.max_items:
            self._taken.clear()
            self._ready.set()
            await self._taken.wait()
        elif not self.buffered(item):
            self._ready.set()

    async def written(self) -> None:
        """Wait until the batch being written (if any) is durable or has failed."""
        writing = self._writing
        if writing is not None and not writing.done():
            await asyncio.wait([writing])

    async def drain(self) -> None:
        """Cut what is pending now; wait until every item added so far is written and acked
        (before a rebalance takes partitions away)."""
        target = self._added
        self._ready.set()
        while self._acked < target and not self._failed:
            await asyncio.sleep(0.005)

    async def run(self) -> None:
        """Cut, compute and write batches until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._arrived.wait()
                remaining = self._first_at + self.max_wait_s - loop.time()
                if remaining > 0 and not self._ready.is_set():
                    try:
                        await asyncio.wait_for(self._ready.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
                if len(self._pending) < self.max_items:
                    await self.written()  # the batch goes on gathering while the previous one is written
                self._ready.clear()
                self._arrived.clear()
                items, self._pending = self._pending, []
                self._taken.set()
                if not items:
                    continue
                self.sizes.append(len(items))
                prepared = await self.core.prepare(group_by_partition([self.to_record(i) for i in items]))
                await self.written()  # writes stay in batch order
                self._writing = asyncio.ensure_future(self._write(prepared, items))
        except asyncio.CancelledError:
            if self._writing is not None:
                self._writing.cancel()
            for task in self._acking:
                task.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to on_error, which decides
            self._failed = True
            self.on_error(exc)

    async def _write(self, prepared, items: list[T]) -> None:
        """Commit a batch to the store; ack its items once its messages are on Kafka too. The
        next batch's commit waits for this one's commit only, not for the Kafka acks."""
        try:
            await self.core.persist(prepared)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._failed = True
            self.on_error(exc)
            return
        previous = self._acking[-1] if self._acking else None
        self._acking.append(asyncio.ensure_future(self._ack_when_published(items, previous)))

    async def _ack_when_published(self, items: list[T], previous: asyncio.Future | None) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])  # acks in batch order
            await self.core.published()
            await self.ack(items)
            self._acked += len(items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._failed = True
            self.on_error(exc)
