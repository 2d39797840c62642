"""The served-model registry in Redis: which student directory the workers serve, and how it got there.

Keys (``prefix`` is TXWATCH_REDIS_PREFIX); this module is their one definition:

``<prefix>:model:dir`` (string)
    The directory every worker serves (:class:`stream.adapters.model_watcher.ModelWatcher`
    polls it every TXWATCH_MODEL_POLL_S and verifies the artifact before use). Unset: the
    workers serve TXWATCH_MODEL_DIR.
``<prefix>:model:history`` (list, newest first)
    One JSON record per switch, never edited or trimmed::

        {"id": str, "at": ISO-8601 UTC, "who": str, "why": str, "action": "promote" | "rollback",
         "from": {"dir", "version"}, "to": {"dir", "version"}, "figures": {...},
         "undoes": id of the record a rollback reverses (rollbacks only)}

Only :func:`switch` writes them, in one step: under ``WATCH`` of both keys it checks that
the pointer still names the record's ``from`` directory (and, if asked, that the newest
record is the one the caller decided on), then sets the pointer and pushes the record in
one ``MULTI``/``EXEC`` transaction. Two concurrent switches cannot interleave: the second
one's transaction is discarded and it raises :class:`SwitchConflict`; nothing of it is
applied. Redis unreachable: :class:`~stream.errors.ServiceUnavailable`, saying whether
anything changed.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import redis

from stream.adapters.model_watcher import pointer_key  # the workers' key, defined once
from stream.errors import ServiceUnavailable, TxwatchError
from stream.scoring.artifact import utc_now

ACTIONS = ("promote", "rollback")


class SwitchConflict(TxwatchError):
    """The served model changed between a switch's decision and its write; nothing was applied."""


def history_key(prefix: str) -> str:
    """The key of the switch records, newest first.

    >>> history_key("txwatch")
    'txwatch:model:history'
    """
    return f"{prefix}:model:history"


def new_record(action: str, *, who: str, why: str, from_: dict[str, Any], to: dict[str, Any],
               figures: dict[str, Any] | None = None, undoes: str | None = None) -> dict[str, Any]:
    """A history record with a fresh id and the current UTC time.

    >>> r = new_record("promote", who="ana", why="weekly", from_={"dir": "/m/a", "version": "a"},
    ...                to={"dir": "/m/b", "version": "b"})
    >>> sorted(r), r["action"], r["to"]["dir"]
    (['action', 'at', 'figures', 'from', 'id', 'to', 'who', 'why'], 'promote', '/m/b')
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    for side, value in (("from", from_), ("to", to)):
        if not isinstance(value, dict) or not value.get("dir"):
            raise ValueError(f"record {side!r} needs a 'dir'")
    record = {"id": uuid.uuid4().hex[:16], "at": utc_now(), "who": who, "why": why, "action": action,
              "from": {"dir": from_["dir"], "version": from_.get("version")},
              "to": {"dir": to["dir"], "version": to.get("version")}, "figures": figures or {}}
    if undoes is not None:
        record["undoes"] = undoes
    return record


def _where(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}"


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def _unavailable(client: redis.Redis, exc: Exception, what: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"cannot reach Redis at {_where(client)} ({exc.__class__.__name__}: {exc}); {what}")


def pointer(client: redis.Redis, prefix: str) -> str | None:
    """The pointer's directory, or None when it is unset."""
    try:
        return _text(client.get(pointer_key(prefix)))
    except redis.RedisError as exc:
        raise _unavailable(client, exc, "the served model is unknown") from None


def current(client: redis.Redis, prefix: str, default_dir: str) -> str:
    """The directory the workers serve: the pointer, or ``default_dir`` (TXWATCH_MODEL_DIR) if unset."""
    return pointer(client, prefix) or default_dir


def history(client: redis.Redis, prefix: str, n: int | None = 10) -> list[dict[str, Any]]:
    """The newest ``n`` records (all with ``None``), newest first."""
    if n is not None and n <= 0:
        return []
    try:
        raw = client.lrange(history_key(prefix), 0, -1 if n is None else n - 1)
    except redis.RedisError as exc:
        raise _unavailable(client, exc, "the model history is unknown") from None
    return [orjson.loads(r) for r in raw]


def switch(client: redis.Redis, prefix: str, record: dict[str, Any], *, after: str | None = None,
           also_delete: tuple[str, ...] = ()) -> dict[str, Any]:
    """Serve ``record["to"]["dir"]`` and append ``record`` to the history, in one atomic step.

    Refused with :class:`SwitchConflict` (nothing written) when the pointer, if set, no
    longer names ``record["from"]["dir"]``, when ``after`` is given and the newest record's
    id is not ``after`` (``""``: the history must be empty), or when another writer touches
    either key between this call's check and its write. ``also_delete``: keys removed in the
    same transaction (the challenger key, when the challenger is promoted). Returns ``record``.
    """
    pkey, hkey = pointer_key(prefix), history_key(prefix)
    expected = record["from"]["dir"]
    body = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
    seen: tuple[Any, Any] = (None, None)
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.watch(pkey, hkey)
            pointer, head = _text(pipe.get(pkey)), pipe.lindex(hkey, 0)
            seen = (pointer, head)
            _check_state(pointer, head, expected, after, record["action"])
            pipe.multi()
            pipe.set(pkey, record["to"]["dir"])
            pipe.lpush(hkey, body)
            if also_delete:
                pipe.delete(*also_delete)
            pipe.execute()
    except redis.WatchError:
        return _settle(client, prefix, record, seen)
    except redis.RedisError as exc:
        raise _unavailable(client, exc, f"nothing was changed: the {record['action']} was not applied") from None
    return record


def _head_id(head: bytes | None) -> str:
    return orjson.loads(head)["id"] if head else ""


def _describe(head: bytes | None) -> str:
    if not head:
        return "no record"
    r = orjson.loads(head)
    return f"{r['action']} to {r['to']['dir']} by {r['who']} at {r['at']}"


def _check_state(pointer: str | None, head: bytes | None, expected: str, after: str | None, action: str) -> None:
    if pointer is not None and pointer != expected:
        raise SwitchConflict(f"the served model is now {pointer}, not {expected} as this {action} assumed "
                             f"(newest record: {_describe(head)}); nothing was changed: check and run it again")
    if after is not None and _head_id(head) != after:
        raise SwitchConflict(f"the model history changed while this {action} was being decided (newest record: "
                             f"{_describe(head)}); nothing was changed: check and run it again")


def _settle(client: redis.Redis, prefix: str, record: dict[str, Any], seen: tuple[Any, Any]) -> dict[str, Any]:
    """After a failed ``EXEC`` (a watched key changed, or the connection broke while watching):
    find out what happened and say it."""
    action = record["action"]
    try:
        pointer, head = _text(client.get(pointer_key(prefix))), client.lindex(history_key(prefix), 0)
    except redis.RedisError as exc:
        raise _unavailable(client, exc, f"the connection broke during the {action}: whether it was applied is "
                                        "unknown; check `txwatch models status`") from None
    if head and orjson.loads(head).get("id") == record["id"]:
        return record  # the reply was lost but the transaction was applied
    if (pointer, head) != seen:
        raise SwitchConflict(f"another switch of the served model came first (now serving {pointer}; newest "
                             f"record: {_describe(head)}); nothing of this {action} was applied: check and run "
                             "it again")
    raise ServiceUnavailable(f"the connection to Redis at {_where(client)} broke during the {action}; nothing was "
                             "changed: run it again")
