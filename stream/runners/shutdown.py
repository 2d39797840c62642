"""A bounded stop: once SIGTERM or SIGINT arrives, the worker exits within a set time.

A worker asked to stop stops taking events and lets its in-flight batch finish; but with
the broker or Redis gone, finishing can take forever (a producer flush, a Redis retry
loop, a consumer leaving its group), and an orchestrator would kill it mid-write anyway.
So the stop arms a deadline: if the process is still running ``seconds`` later, it exits
at once. That is safe by construction: a batch's states, alerts and offset reach Redis in
one atomic script or not at all, and Kafka offsets are committed only after it, so a batch
cut short is replayed by the next owner and applied once.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("txwatch.worker")

EXIT_DEADLINE = 75  # EX_TEMPFAIL: stopped by the deadline; a supervisor may start it again


class StopDeadline:
    """Arm once on the first stop request; the process exits ``seconds`` later if still up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        """True once a stop was asked for."""
        return self._timer is not None

    def arm(self, why: str) -> None:
        """Start the countdown (a second request changes nothing)."""
        with self._lock:
            if self._timer is not None:
                return
            log.info("%s: stopping (at most %.0fs)", why, self.seconds)
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        """The stop finished in time (tests)."""
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        log.error("did not stop within %.0fs (broker or Redis not answering); exiting now: a batch not "
                  "yet in Redis is replayed by the partition's next owner", self.seconds)
        logging.shutdown()
        os._exit(EXIT_DEADLINE)
