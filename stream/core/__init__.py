"""The engine-agnostic pipeline core: records in -> states, alerts, dead letters out; no I/O.

It owns its ports (:mod:`stream.core.ports`) and imports no redis, kafka or faust.
"""
