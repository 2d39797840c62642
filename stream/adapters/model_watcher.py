"""Hot model reload: the :class:`~stream.core.ports.ModelSource` the worker polls.

A new student is picked up without a restart when its directory changes (a new
``manifest.json``) or when the Redis pointer ``<prefix>:model:dir`` names another directory.
The shadow challenger is picked up the same way from ``<prefix>:model:challenger``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson
import redis

from stream.errors import ArtifactError
from stream.metrics import WorkerMetrics
from stream.scoring.profile import Profile, load_profile
from stream.scoring.student import Student, load_student
from stream.settings import Settings

log = logging.getLogger("txwatch.worker")


def pointer_key(prefix: str) -> str:
    """The Redis key naming the directory the workers serve (``txwatch promote`` sets it).

    >>> pointer_key("txwatch")
    'txwatch:model:dir'
    """
    return f"{prefix}:model:dir"


def challenger_key(prefix: str) -> str:
    """The Redis key naming the shadow challenger (``txwatch models challenger`` sets it): a JSON
    object ``{"dir", "version", "who", "at", "why"}``; the workers read ``dir``.

    >>> challenger_key("txwatch")
    'txwatch:model:challenger'
    """
    return f"{prefix}:model:challenger"


def challenger_dir(raw: bytes | str | None) -> str | None:
    """The directory a challenger key's value names (None: no challenger, or not readable).

    >>> challenger_dir(b'{"dir": "/m/b", "version": "b"}'), challenger_dir(None), challenger_dir(b"junk")
    ('/m/b', None, None)
    """
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value.get("dir") if isinstance(value, dict) and isinstance(value.get("dir"), str) else None


class ModelWatcher:
    """Picks up a new student without a restart: a changed directory, or a Redis pointer.

    The pointer key ``<prefix>:model:dir`` (if set) names the directory to serve. A new
    artifact is verified before use; a broken one is refused, logged and counted, and the
    current model keeps serving.
    """

    def __init__(self, settings: Settings, client: redis.Redis | None, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.pointer_key = pointer_key(settings.redis_prefix)
        self.dir = settings.model_dir
        self._stamp: tuple | None = None
        self.profile: Profile | None = None   # the serving model's reference profile (drift)
        self.challenger_key = challenger_key(settings.redis_prefix)
        self._challenger_stamp: tuple | None = None

    def _target(self) -> str:
        if self.client is not None:
            try:
                raw = self.client.get(self.pointer_key)
            except redis.RedisError:
                return self.dir  # Redis unreachable: the pointer is unknown, keep serving
            if raw:
                return raw.decode()
        return self.settings.model_dir

    def _fingerprint(self, directory: str) -> tuple | None:
        try:
            manifest = Path(directory) / "manifest.json"
            st = manifest.stat()
            return (directory, st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    def load_initial(self) -> Student:
        """The model to start with; ``ArtifactError`` if it is not valid."""
        self.dir = self._target()
        student = load_student(self.dir)
        self.profile = _profile(self.dir)
        self._stamp = self._fingerprint(self.dir)
        self.metrics.set_model(student.version)
        self.metrics.reloads.labels(result="ok").inc()
        return student

    def poll(self) -> Student | None:
        """A newly verified student if the model changed since the last poll, else None."""
        target = self._target()
        stamp = self._fingerprint(target)
        if stamp == self._stamp:
            return None
        self._stamp = stamp  # do not retry a broken artifact until it changes again
        try:
            student = load_student(target)
        except ArtifactError as exc:
            self.metrics.reloads.labels(result="refused").inc()
            log.error("model reload refused, keeping the current model: %s", exc)
            return None
        self.dir = target
        self.profile = _profile(target)
        self.metrics.reloads.labels(result="ok").inc()
        self.metrics.set_model(student.version)
        log.info("model reloaded: %s from %s", student.version, target)
        self._challenger_stamp = None  # judge the challenger again against the new champion
        return student

    def poll_challenger(self, champion: Student) -> tuple[bool, Student | None]:
        """``(changed, challenger)``: whether the challenger to shadow changed since the last
        poll, and the new one (None: none, or refused). A challenger must verify and have
        the champion's features; one that does not is refused, logged and counted, and none
        is shadowed. Redis unreachable: no change."""
        if self.client is None:
            return False, None
        try:
            target = challenger_dir(self.client.get(self.challenger_key))
        except redis.RedisError:
            return False, None
        if target is not None and os.path.realpath(target) == os.path.realpath(self.dir):
            target = None  # promoted: it is the champion now
        stamp = (target, self._fingerprint(target)) if target else None
        if stamp == self._challenger_stamp:
            return False, None
        self._challenger_stamp = stamp
        if target is None:
            log.info("no shadow challenger")
            return True, None
        try:
            challenger = load_student(target)
        except ArtifactError as exc:
            self.metrics.reloads.labels(result="challenger_refused").inc()
            log.error("shadow challenger refused: %s", exc)
            return True, None
        if not champion.same_features(challenger):
            self.metrics.reloads.labels(result="challenger_refused").inc()
            log.error("shadow challenger %s at %s refused: its features (%d, schema %s) are not the served model's "
                      "(%d, schema %s)", challenger.version, target, len(challenger.feature_names),
                      str(challenger.manifest.get("feature_schema_hash"))[:12], len(champion.feature_names),
                      str(champion.manifest.get("feature_schema_hash"))[:12])
            return True, None
        log.info("shadow challenger: %s from %s", challenger.version, target)
        return True, challenger


def _profile(directory: str) -> Profile | None:
    """The artifact's reference profile, or None (drift is then not counted) with the reason logged."""
    try:
        return load_profile(directory)
    except ArtifactError as exc:
        log.warning("no drift counting for this model: %s", exc)
        return None
