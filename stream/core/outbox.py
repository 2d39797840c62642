"""The outbox: a batch's Kafka messages, stored with the batch in Redis until Kafka has them.

A batch's alerts and dead letters are published to Kafka *after* its atomic Redis commit,
so a crash between the two would lose them from the Kafka topics (the replayed batch is a
no-op in Redis). The commit therefore stores them too, in the partition's outbox (one
entry per batch, keyed by its end offset); once Kafka acknowledges them the entry is
removed. A worker that takes over a partition publishes whatever the outbox still holds
before anything else, so every message reaches Kafka at least once.

An entry is the batch's messages, each ``(topic, key, value, headers)``, packed as
length-prefixed bytes (values are arbitrary bytes: dead letters carry the original
payload):

>>> msgs = [("alerts", b"e1", b'{"x":1}', []), ("dlq", None, b"\\xff", [("txwatch-reason", b"bad")])]
>>> unpack(pack(msgs)) == msgs
True
"""

from __future__ import annotations

import struct

Message = tuple[str, "bytes | None", bytes, list[tuple[str, bytes]]]

_LEN = struct.Struct("<I")
_NONE = 0xFFFFFFFF  # the length of an absent key


def _put(out: list[bytes], data: bytes | None) -> None:
    if data is None:
        out.append(_LEN.pack(_NONE))
    else:
        out.append(_LEN.pack(len(data)))
        out.append(data)


def pack(messages: list[Message]) -> bytes:
    """One outbox entry of ``messages``."""
    out = [_LEN.pack(len(messages))]
    for topic, key, value, headers in messages:
        _put(out, topic.encode())
        _put(out, key)
        _put(out, value)
        out.append(_LEN.pack(len(headers)))
        for name, hv in headers:
            _put(out, name.encode())
            _put(out, hv)
    return b"".join(out)


def unpack(data: bytes) -> list[Message]:
    """The messages of an outbox entry (the inverse of :func:`pack`)."""
    pos = 0

    def take() -> bytes | None:
        nonlocal pos
        (n,) = _LEN.unpack_from(data, pos)
        pos += 4
        if n == _NONE:
            return None
        chunk = data[pos:pos + n]
        pos += n
        return chunk

    (count,) = _LEN.unpack_from(data, 0)
    pos = 4
    messages: list[Message] = []
    for _ in range(count):
        topic = take().decode()
        key = take()
        value = take()
        (n_headers,) = _LEN.unpack_from(data, pos)
        pos += 4
        headers = []
        for _ in range(n_headers):
            name = take().decode()
            headers.append((name, take()))
        messages.append((topic, key, value, headers))
    return messages
