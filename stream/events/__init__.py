"""The formats txwatch reads and writes: the event contract, event files, alerts, dead letters.

Each format is defined once, here, and used by every side that reads or writes it.
"""
