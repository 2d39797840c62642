"""Live alerts for dashboards: one Redis pub/sub subscription, fanned out to every open page.

A thread holds the subscription to the workers' channel (``P:alerts:live``) and hands each
message to every connected dashboard's queue on the event loop; a slow dashboard's queue is
bounded and drops its oldest message rather than hold the others up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import orjson

log = logging.getLogger("txwatch.workbench.live")
QUEUE_MAX = 1000


def live_view(alert: dict[str, Any]) -> dict[str, Any]:
    """What a dashboard shows of a new alert (from the channel's alert hash JSON)."""
    event = alert.get("event")
    if isinstance(event, str):
        try:
            event = orjson.loads(event)
        except orjson.JSONDecodeError:
            event = {}
    reasons = alert.get("reasons")
    if isinstance(reasons, str):
        try:
            reasons = orjson.loads(reasons)
        except orjson.JSONDecodeError:
            reasons = []
    event = event if isinstance(event, dict) else {}
    top = reasons[0]["feature"] if reasons and isinstance(reasons[0], dict) and "feature" in reasons[0] else None
    return {"event_id": alert.get("event_id"), "account_id": alert.get("account_id"), "ts": alert.get("ts"),
            "score": alert.get("score"), "type": event.get("type"), "usd_value": event.get("usd_value"),
            "top_reason": top, "created_ms": alert.get("created_ms")}


class LiveHub:
    """Subscribes once, broadcasts to many."""

    def __init__(self, client, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queues: set[asyncio.Queue] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start listening (the thread delivers onto ``loop``)."""
        self.loop = loop
        self._thread = threading.Thread(target=self._listen, name="txwatch-live", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def subscribe(self) -> asyncio.Queue:
        """A queue that receives every new alert from now on."""
        q: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self.queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        """Forget a closed page's queue."""
        self.queues.discard(q)

    def _put(self, item: dict) -> None:
        for q in list(self.queues):
            if q.full():
                q.get_nowait()
            q.put_nowait(item)

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    if msg and msg.get("type") == "message":
                        try:
                            item = live_view(orjson.loads(msg["data"]))
                        except (orjson.JSONDecodeError, TypeError):
                            continue
                        if self.loop is not None:
                            self.loop.call_soon_threadsafe(self._put, item)
            except Exception:  # noqa: BLE001 - Redis away: resubscribe after a pause
                log.warning("live alert subscription lost; resubscribing", exc_info=True)
                self._stop.wait(1.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass
