"""Hot model reload: the :class:`~stream.core.ports.ModelSource` the worker polls.

A new student is picked up without a restart when its directory changes (a new
``manifest.json``) or when the Redis pointer ``<prefix>:model:dir`` names another directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
        return student


def _profile(directory: str) -> Profile | None:
    """The artifact's reference profile, or None (drift is then not counted) with the reason logged."""
    try:
        return load_profile(directory)
    except ArtifactError as exc:
        log.warning("no drift counting for this model: %s", exc)
        return None
