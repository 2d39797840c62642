"""Dead letters: the one definition of a refused record and of its Kafka encoding.

A record txwatch cannot use (no value, not valid JSON, against the contract, too large,
too late, no account to key it by) goes to the dead-letter topic with its original key
and bytes, and headers that say why:

``txwatch-reason``     the reason, e.g. ``not valid JSON: ...`` or ``late by 7200s (...)``
``txwatch-field``      the field at fault (empty if none)
``txwatch-source``     ``topic:partition:offset`` of the input record
``txwatch-truncated``  only for values over the cap: the full size in bytes
``txwatch-sha256``     only for values over the cap: the digest of the full value

>>> k, v, h = dead_letter_record(DeadLetter("ev", 1, 7, "not valid JSON", None, b"x" * 10, b"k"), 4)
>>> v, dict(h)[TRUNCATED], dict(h)[SOURCE]
(b'xxxx', b'10', b'ev:1:7')
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

REASON, FIELD, SOURCE, TRUNCATED, SHA256 = ("txwatch-reason", "txwatch-field", "txwatch-source",
                                            "txwatch-truncated", "txwatch-sha256")


@dataclass(slots=True)
class DeadLetter:
    """A record that could not be used, with the reason and its original bytes."""

    topic: str
    partition: int
    offset: int
    reason: str
    field: str | None
    value: bytes
    key: bytes | None


def dead_letter_record(d: DeadLetter, max_bytes: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of a dead letter for the dead-letter topic.

    A value over ``max_bytes`` (it could not be produced: the broker caps record sizes) is
    cut to ``max_bytes``; ``txwatch-truncated`` then holds its full size and
    ``txwatch-sha256`` its digest, and ``txwatch-source`` names the input record, which
    still holds all of it.
    """
    headers = [(REASON, d.reason.encode()), (FIELD, (d.field or "").encode()),
               (SOURCE, f"{d.topic}:{d.partition}:{d.offset}".encode())]
    value = d.value
    if len(value) > max_bytes:
        headers += [(TRUNCATED, str(len(value)).encode()), (SHA256, hashlib.sha256(value).hexdigest().encode())]
        value = value[:max_bytes]
    return d.key, value, headers
