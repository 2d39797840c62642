"""In-memory doubles of the core's ports, for unit tests only (the runtime never imports this)."""

from __future__ import annotations

import time
from typing import Any, Sequence

from stream.core.pipeline import BatchResult
from stream.core.ports import FenceError
from stream.errors import ServiceUnavailable
from stream.events.alerts import alert_hash


class MemoryStore:
    """In-memory double of :class:`stream.adapters.redis_store.RedisStore` for unit tests (same semantics, no server)."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}
        self.states: dict[str, dict[str, bytes]] = {}
        self.alerts: dict[str, dict[str, dict[str, Any]]] = {}
        self.outboxes: dict[str, dict[int, bytes]] = {}
        self.fail_next = 0  # tests: make the next N commits raise ServiceUnavailable

    def load(self, pkey: str, accounts: Sequence[str]) -> dict[str, bytes | None]:
        """States of ``accounts`` in partition ``pkey`` (None if unknown)."""
        part = self.states.get(pkey, {})
        return {a: part.get(a) for a in accounts}

    def offset(self, pkey: str) -> int:
        """Last applied offset (-1 if none)."""
        return self.offsets.get(pkey, -1)

    def commit(self, result: BatchResult) -> list[str]:
        """Apply a batch atomically; return the event ids of newly added alerts."""
        if self.fail_next:
            self.fail_next -= 1
            raise ServiceUnavailable("memory store: injected failure")
        if result.empty or self.offsets.get(result.partition_key, -1) == result.last_offset:
            return []  # (the second case: applied before, a retry after a lost reply)
        if self.offsets.get(result.partition_key, -1) != result.first_offset:
            raise FenceError(f"{result.partition_key}: stored offset moved")
        self.offsets[result.partition_key] = result.last_offset
        if result.outbox:
            self.outboxes.setdefault(result.partition_key, {})[result.last_offset] = result.outbox
        self.states.setdefault(result.partition_key, {}).update(result.states)
        part = self.alerts.setdefault(result.partition_key, {})
        added = []
        now = int(time.time() * 1000)
        for a in result.alerts:
            if a.event_id not in part:
                part[a.event_id] = alert_hash(a, now)
                added.append(a.event_id)
        return added

    def commit_many(self, results: list[BatchResult], cleared=None) -> list[list[str] | FenceError]:
        """Like :meth:`stream.adapters.redis_store.RedisStore.commit_many`."""
        if self.fail_next:
            self.fail_next -= 1
            raise ServiceUnavailable("memory store: injected failure")
        self._drop(cleared or {})
        out: list[list[str] | FenceError] = []
        for r in results:
            try:
                out.append(self.commit(r))
            except FenceError as exc:
                out.append(exc)
        return out

    async def commit_many_async(self, results: list[BatchResult], cleared=None) -> list[list[str] | FenceError]:
        """Like :meth:`stream.adapters.redis_store.RedisStore.commit_many_async`."""
        return self.commit_many(results, cleared)

    async def aclose(self) -> None:
        """Like :meth:`stream.adapters.redis_store.RedisStore.aclose` (nothing to close)."""

    def all_alerts(self) -> dict[str, dict[str, Any]]:
        """Every alert by event id."""
        return {k: v for part in self.alerts.values() for k, v in part.items()}

    def outbox(self, pkey: str) -> dict[int, bytes]:
        """Like :meth:`stream.adapters.redis_store.RedisStore.outbox`."""
        return dict(self.outboxes.get(pkey, {}))

    def clear_outbox(self, cleared) -> None:
        """Like :meth:`stream.adapters.redis_store.RedisStore.clear_outbox`."""
        self._drop(cleared)

    def _drop(self, cleared) -> None:
        for pkey, ids in cleared.items():
            for i in ids:
                self.outboxes.get(pkey, {}).pop(i, None)


class MemorySink:
    """In-memory double of the monitoring sink (:class:`stream.core.ports.MonitorSink`);
    ``down`` makes every record refused, as an unreachable Redis does."""

    def __init__(self) -> None:
        self.windows: list = []     # drift windows
        self.changes: list = []     # threshold moves
        self.samples: list = []     # fidelity samples
        self.shadows: list = []     # shadow windows
        self.down = False

    def _take(self, where: list, what: str, item) -> None:
        if self.down:
            raise ServiceUnavailable(f"Redis {what} write: down")
        where.append(item)

    def record_drift(self, window) -> None:
        self._take(self.windows, "drift", window)

    def record_threshold(self, change) -> None:
        self._take(self.changes, "threshold", change)

    def record_sample(self, sample) -> None:
        self._take(self.samples, "fidelity sample", sample)

    def record_shadow(self, window) -> None:
        self._take(self.shadows, "shadow", window)


class StaticWatcher:
    """A model source that never changes the served model (with its reference profile), and
    shadows ``challenger`` from the first poll on (None: no challenger)."""

    def __init__(self, profile, challenger=None) -> None:
        self.profile = profile
        self.challenger = challenger
        self._told = False

    def poll(self):
        return None

    def poll_challenger(self, champion):
        if self._told or self.challenger is None:
            return False, None
        self._told = True
        return True, self.challenger
