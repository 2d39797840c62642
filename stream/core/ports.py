"""The ports of the pipeline core: what it needs from the outside world, as small Protocols.

The core (:mod:`stream.core.pipeline`, :mod:`stream.core.worker`) imports no client
library. Adapters implement these ports (:mod:`stream.adapters`): the Redis store is a
:class:`StateStore`, an aiokafka or faust producer becomes a :data:`Publish`, the model
watcher is a :class:`ModelSource`; the tests use in-memory doubles (``tests/doubles.py``).
Adapters report an unreachable service as :class:`stream.errors.ServiceUnavailable`,
which the core retries with backoff; any other exception is a bug and propagates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping, Protocol, Sequence

from stream.errors import TxwatchError

if TYPE_CHECKING:
    from stream.core.drift import DriftWindow
    from stream.core.pipeline import BatchResult
    from stream.core.ratecontrol import ThresholdChange
    from stream.core.shadow import ShadowWindow
    from stream.events.samples import Sample
    from stream.scoring.profile import Profile
    from stream.scoring.student import Student


@dataclass(slots=True)
class Record:
    """One Kafka record, as any runner sees it.

    Anything with these attributes will do: the plain runner hands over aiokafka's own
    ``ConsumerRecord`` objects (same names, ``timestamp`` in epoch ms), so a record is
    never copied on the way in. (Not frozen: a frozen dataclass is several times dearer
    to build, and the faust runner builds one per event.)
    """

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int | None = None  # epoch ms (the producer's or the broker's time)


class FenceError(TxwatchError):
    """The stored offset moved under this worker: another owner wrote the partition."""


class StateSource(Protocol):
    """Where states and applied offsets are read from on a cache miss."""

    def load(self, partition_key: str, accounts: Sequence[str]) -> dict[str, bytes | None]: ...

    def offset(self, partition_key: str) -> int: ...


class StateStore(StateSource, Protocol):
    """A :class:`StateSource` that also applies batch results, one atomic step each."""

    def commit_many(self, results: list["BatchResult"],
                    cleared: Mapping[str, Sequence[int]] | None = None) -> list[list[str] | FenceError]:
        """Apply each result atomically (fenced on its ``first_offset``), its ``outbox``
        entry included; per result, the event ids of the alerts it newly added, or the
        ``FenceError`` it met. ``cleared``: outbox entries (partition key -> batch end
        offsets) whose messages Kafka has acknowledged, removed in the same round trip."""
        ...

    async def commit_many_async(self, results: list["BatchResult"],
                                cleared: Mapping[str, Sequence[int]] | None = None) -> list[list[str] | FenceError]:
        """:meth:`commit_many`, awaited on the running event loop without blocking it (the
        worker's write path)."""
        ...

    async def aclose(self) -> None:
        """Close the connections :meth:`commit_many_async` opened on the running loop (a
        stopping worker's last step); bounded, and quiet if the server is gone."""
        ...

    def outbox(self, partition_key: str) -> dict[int, bytes]:
        """The partition's outbox entries not yet cleared, by batch end offset."""
        ...

    def clear_outbox(self, cleared: Mapping[str, Sequence[int]]) -> None:
        """Remove outbox entries (partition key -> batch end offsets) whose messages Kafka
        has acknowledged, when no commit is coming to carry them."""
        ...


class ModelSource(Protocol):
    """Where a new model comes from while the worker runs."""

    def poll(self) -> "Student | None":
        """A newly verified model if it changed since the last poll, else None."""
        ...

    @property
    def profile(self) -> "Profile | None":
        """The serving model's reference profile (None: drift is not counted for it)."""
        ...

    def poll_challenger(self, champion: "Student") -> "tuple[bool, Student | None]":
        """``(changed, challenger)``: whether the shadow challenger changed since the last poll,
        and the one to shadow now (None: none)."""
        ...


class MonitorSink(Protocol):
    """Where a worker's monitoring records go: drift windows, threshold changes, fidelity
    samples, shadow windows. Each raises ``ServiceUnavailable`` if the store is not reachable
    (the worker keeps the record, bounded, and hands it over later)."""

    def record_drift(self, window: "DriftWindow") -> None:
        """Add one window's counts (to what other workers counted); ``ServiceUnavailable`` if
        the store is not reachable."""
        ...

    def record_threshold(self, change: "ThresholdChange") -> None:
        """Append one alert-rate control move; ``ServiceUnavailable`` if not reachable."""
        ...

    def record_sample(self, sample: "Sample") -> None:
        """Send scored rows for live teacher fidelity (``txwatch fidelity`` reads them)."""
        ...

    def record_shadow(self, window: "ShadowWindow") -> None:
        """Add one window of shadow-challenger scoring (to what other workers counted)."""
        ...


# publish(topic, [(key, value, headers)]) -> awaits every acknowledgement
Publish = Callable[[str, list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]], Awaitable[None]]
