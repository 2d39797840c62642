"""One exception root for txwatch; every error a user can cause derives from it."""

from __future__ import annotations


class TxwatchError(Exception):
    """Root of every error txwatch raises on purpose."""


class InvalidEvent(TxwatchError):
    """An exchange event that violates the input contract; carries the reason."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        message = f"{field}: {reason}" if field else reason
        super().__init__(message)


class ArtifactError(TxwatchError):
    """A model artifact that is missing, tampered with or built for another schema."""


class DataError(TxwatchError):
    """An input file (events or table) that cannot be used: missing, empty, malformed."""


class ConfigError(TxwatchError):
    """A setting that is missing or invalid."""


class ServiceUnavailable(TxwatchError):
    """Kafka or Redis cannot be reached at the configured URL."""
