"""A faust app whose agent does nothing but take events (``txwatch bench stream``'s baselines).

Run as ``python -m txwatch.bench.noop TOPIC N BATCH [MODE]``: it counts records and, when N
have arrived, prints one JSON line ``{"records", "seconds", "events_per_s"}`` measured from
the first batch (so start-up and group join are excluded) and exits. ``MODE`` ``take``
(the default) iterates ``stream.take(BATCH, within=0.05)``, faust's own way of taking
batches; ``bulk`` takes events the way the txwatch worker does
(:func:`stream.runners.faust_tuning.take_events`, acks per 1,000 events), so the worker's
ratio to it is the cost of its own work alone.
"""

from __future__ import annotations

import json
import os
import sys
import time

import faust

ACK_EVERY = 1000  # the bulk agent acks in batches about the size the worker's batches reach under load


def main() -> None:
    from stream.runners.faust_app import GIL_SWITCH_INTERVAL_S
    from stream.runners.faust_tuning import (batch_acker, deliver_inline, read_producer_mode_once, set_fetch_wait,
                                             take_events)
    from stream.runners.wiring import tune_gc
    from stream.settings import load_settings

    topic_name, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "take"
    settings = load_settings()
    # The worker's consumer settings: its fetch wait, its record delivery, and no leader
    # topic (an always-empty partition that a short fetch wait would poll hundreds of times
    # a second).
    set_fetch_wait(settings.fetch_max_wait_ms)
    deliver_inline()
    read_producer_mode_once()
    app = faust.App(settings.group_id, broker=settings.kafka_url, store="memory://",
                    web_enabled=False, consumer_auto_offset_reset="earliest", topic_disable_leader=True,
                    broker_session_timeout=6.0, broker_rebalance_timeout=6.0)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "t0": None, "first": 0}

    def counted(k: int) -> None:  # the clock is read at the first batch and at the n-th record only
        if seen["t0"] is None:
            seen["t0"], seen["first"] = time.perf_counter(), k
        seen["n"] += k
        if seen["n"] >= n:
            elapsed = time.perf_counter() - seen["t0"]
            counted_ = seen["n"] - seen["first"]
            print(json.dumps({"records": seen["n"], "seconds": round(elapsed, 3),
                              "events_per_s": round(counted_ / elapsed) if elapsed > 0 else None}), flush=True)
            os._exit(0)

    if mode == "bulk":
        @app.agent(topic)
        async def noop_bulk(stream):
            stream.enable_acks = False
            ack = batch_acker(app)
            taken: list = []

            async def handle(event) -> None:  # counts each event, acks them in batches as the worker does
                taken.append(event)
                if len(taken) >= ACK_EVERY:
                    ack(taken)
                    taken.clear()
                counted(1)

            await take_events(app, stream, handle, ack)
    else:
        @app.agent(topic)
        async def noop(stream):
            async for values in stream.take(batch, within=0.05):
                counted(len(values))

    # The same process settings as `txwatch worker`, so the ratio compares the agents'
    # work and nothing else: the garbage-collector tuning and the GIL switch interval.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    tune_gc()
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
