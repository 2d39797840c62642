"""One frozen settings object, read from the environment once at the entry point.

Every setting is declared here with its type, default and description; its environment
variable is ``TXWATCH_`` + the upper-cased name (``TXWATCH_KAFKA_URL``...). Secrets are
``SecretStr``: they print as ``**********`` in logs, reprs and errors.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.errors import ConfigError


class Settings(BaseSettings):
    """txwatch worker, demo and replayer settings."""

    model_config = SettingsConfigDict(env_prefix="TXWATCH_", frozen=True, extra="forbid")

    # -- Kafka ------------------------------------------------------------------------
    kafka_url: str = Field("", description="Kafka bootstrap servers, e.g. kafka://k1:9092,k2:9092 "
                                           "(empty: the demo starts an embedded broker)")
    kafka_security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: str = Field("PLAIN", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret)")
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle for SSL/SASL_SSL")
    input_topics: str = Field("exchange.events", description="comma-separated input topics (JSON events keyed by account_id)")
    partitions: int = Field(4, ge=1, description="partitions of the topics txwatch creates")
    replication_factor: int = Field(1, ge=1, description="replication factor of the topics txwatch creates")
    dead_letter_topic: str = Field("exchange.events.dlq", description="invalid events with their reason")
    alerts_topic: str = Field("txwatch.alerts", description="alerts, for other consumers (key: event_id)")
    group_id: str = Field("txwatch", description="consumer group of the workers")
    session_timeout_s: float = Field(10.0, gt=0, description="consumer group session timeout")
    fetch_max_wait_ms: int = Field(50, ge=1, le=1000, description="longest the broker holds a fetch for data, 1-1000 "
                                   "(Apache Kafka answers as soon as data arrives; on the embedded broker it adds to "
                                   "latency, and 0 returns no records at all; docs/benchmarks.md)")
    rebalance_timeout_s: float = Field(10.0, gt=0, description="consumer group rebalance timeout")

    # -- Redis ------------------------------------------------------------------------
    redis_url: str = Field("", description="redis:// or rediss:// (TLS) URL (empty: the demo starts an embedded Redis)")
    redis_password: SecretStr | None = Field(None, description="Redis password (secret); overrides one in the URL")
    redis_tls_ca_file: str | None = Field(None, description="CA bundle that verifies the Redis server with rediss:// "
                                                            "(default: the system's)")
    redis_prefix: str = Field("txwatch", description="prefix of every Redis key txwatch writes")
    alert_ttl_days: float = Field(90.0, gt=0, description="retention of alert hashes and the time index")
    alerts_maxlen: int = Field(100_000, ge=1, description="approximate length cap of each partition's alert stream")

    # -- Scoring ----------------------------------------------------------------------
    model_dir: str = Field("runs/student", description="student artifact directory")
    model_poll_s: float = Field(5.0, gt=0, description="how often the worker checks for a new model")
    batch_max: int = Field(5000, ge=1, description="events per scoring batch at most")
    batch_within_s: float = Field(0.5, gt=0, description="longest a batch stays open; it is cut at once when no more "
                                  "records are buffered, so a caught-up worker never waits for it (docs/stream.md)")
    reasons_k: int = Field(3, ge=1, le=10, description="reason codes stored with each alert")
    max_event_bytes: int = Field(65536, ge=256, description="larger payloads are dead-lettered")
    dead_letter_max_bytes: int = Field(1_000_000, ge=1024, description="dead-letter values larger than this are "
                                       "cut to it (headers keep the full size and sha256; the source offset "
                                       "points at the original); keep it under the broker's message.max.bytes")

    drift_window_s: float = Field(60.0, ge=0, description="drift: each worker counts every feature's and the "
                                  "score's histogram against the model's reference profile and adds it to Redis once "
                                  "per window of this many seconds (0: off); txwatch drift reads them. The shadow "
                                  "challenger's counts use the same windows (60 s when this is 0)")

    fidelity_sample_rate: float = Field(0.01, ge=0, le=1, description="live fidelity: the share of scored rows each "
                                        "worker sends, with the student's score and version, to Redis for txwatch "
                                        "fidelity to score with the teacher (0: off)")

    rate_control_target: float = Field(0.0, ge=0, lt=1, description="alert-rate control: hold the alert rate near "
                                       "this share of scored events by moving the threshold (0: off, the model's "
                                       "stored threshold is used as is); see rate_control_*")
    rate_control_bounds: str = Field("0.5,2.0", description="alert-rate control: the lowest and highest threshold, as "
                                     "factors of the model's stored threshold (the highest is capped at 1)")
    rate_control_window: int = Field(20_000, ge=100, description="alert-rate control: recent scores the quantile is "
                                     "taken over")
    rate_control_every: int = Field(2_000, ge=1, description="alert-rate control: scored events between moves of the "
                                    "threshold")

    # -- Operations ---------------------------------------------------------------------
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus /metrics port (0: off)")
    log_interval_s: float = Field(10.0, gt=0, description="period of the one-line progress log")
    log_level: str = Field("INFO", description="txwatch log level: DEBUG (also turns on the Kafka, Redis and "
                                               "faust libraries' debug logs), INFO, WARNING or ERROR")
    retry_max_s: float = Field(5.0, gt=0, description="longest backoff between retries of a failed Redis write (bounds how long after Redis returns the worker resumes)")
    commit_interval_s: float = Field(1.0, gt=0, description="plain runner: how often Kafka offsets are committed "
                                                            "(Redis holds the applied offsets; this sets the restart point)")
    failpoint: str = Field("", description="testing only: exit-after-redis-commit:N makes a worker exit right "
                           "after its N-th Redis commit, before publishing that batch (the crash tests)")
    shutdown_timeout_s: float = Field(10.0, gt=0, description="longest a worker takes to stop after SIGTERM or "
                                      "SIGINT, whether or not the broker and Redis answer; then it exits with "
                                      "status 75 (an unfinished batch is replayed, never lost)")

    # -- Reviewers' workbench (txwatch ui) ------------------------------------------------
    database_url: str = Field("sqlite:///runs/workbench.db", description="workbench records (cases, dispositions, "
                              "users, audit trail): a SQLAlchemy URL, sqlite:///FILE or "
                              "postgresql+psycopg://USER@HOST/DB")
    database_password: SecretStr | None = Field(None, description="database password (secret); overrides one in the URL")
    ui_host: str = Field("127.0.0.1", description="address txwatch ui listens on")
    ui_port: int = Field(8080, ge=0, le=65535, description="port txwatch ui listens on (0: a free one)")
    ui_session_ttl_s: float = Field(8 * 3600.0, gt=0, description="a reviewer's session ends after this long without a request")
    case_lock_ttl_s: float = Field(1800.0, gt=0, description="a claimed case's lock expires after this long without work on it")
    four_eyes: bool = Field(True, description="closing a case as confirmed needs an approver other than its reviewer")
    login_attempts: int = Field(5, ge=1, description="failed logins per user name and address within 5 minutes "
                                "before further attempts are refused until the window passes")
    reviews_topic: str = Field("exchange.reviews", description="Kafka topic of reviewers' labels (one record per "
                               "disposition, key: event_id)")
    webhook_timeout_s: float = Field(5.0, gt=0, description="how long a webhook delivery may take before it is retried")

    @property
    def producer_max_request_bytes(self) -> int:
        """Producer request cap: the largest dead letter plus room for headers and batching."""
        return self.dead_letter_max_bytes + 65_536

    @field_validator("kafka_security_protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        v = v.upper()
        if v not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError("must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return v

    @field_validator("failpoint")
    @classmethod
    def _failpoint(cls, v: str) -> str:
        name, _, count = v.partition(":")
        if v and not (name == "exit-after-redis-commit" and count.isdigit() and int(count) > 0):
            raise ValueError("must be empty or exit-after-redis-commit:N with N > 0")
        return v

    @field_validator("rate_control_bounds")
    @classmethod
    def _bounds(cls, v: str) -> str:
        try:
            lo, hi = (float(x) for x in v.split(","))
        except ValueError:
            raise ValueError("must be two numbers, LOW,HIGH (factors of the model's threshold)") from None
        if not 0 < lo <= 1 <= hi:
            raise ValueError("must be LOW,HIGH with 0 < LOW <= 1 <= HIGH")
        return v

    @property
    def rate_control_factors(self) -> tuple[float, float]:
        """``(low, high)`` of ``rate_control_bounds``."""
        lo, hi = (float(x) for x in self.rate_control_bounds.split(","))
        return lo, hi

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str) -> str:
        if v and urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    # -- derived ------------------------------------------------------------------------
    @property
    def topics(self) -> list[str]:
        """Input topics as a list."""
        return [t.strip() for t in self.input_topics.split(",") if t.strip()]

    @property
    def bootstrap_servers(self) -> str:
        """``host:port,host:port`` without the ``kafka://`` scheme."""
        return ",".join(part.split("://", 1)[-1] for part in self.kafka_url.split(","))

    def kafka_client_options(self) -> dict:
        """Security options in aiokafka / kafka-python keyword form."""
        opts: dict = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            opts.update(sasl_mechanism=self.kafka_sasl_mechanism,
                        sasl_plain_username=self.kafka_sasl_username,
                        sasl_plain_password=(self.kafka_sasl_password.get_secret_value()
                                             if self.kafka_sasl_password else None))
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            opts["ssl_context"] = ssl.create_default_context(cafile=self.kafka_ssl_cafile)
        return opts

    def to_env(self) -> dict[str, str]:
        """These settings as ``TXWATCH_*`` variables, for a worker started as a subprocess."""
        env = {}
        for name, value in self.model_dump().items():
            if value is not None:
                secret = value.get_secret_value() if isinstance(value, SecretStr) else value
                env[f"TXWATCH_{name.upper()}"] = str(secret)
        return env

    def redacted_database_url(self) -> str:
        """The database URL with any password in it masked (for logs and errors)."""
        parts = urlsplit(self.database_url)
        if parts.password:
            return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
        return self.database_url

    def redacted_redis_url(self) -> str:
        """The Redis URL with any password in it masked (for logs and errors)."""
        parts = urlsplit(self.redis_url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return parts._replace(netloc=netloc).geturl()
        return self.redis_url


def load_settings(**overrides) -> Settings:
    """Settings from the environment (plus explicit overrides); ``ConfigError`` if invalid."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"TXWATCH_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None


def describe_settings() -> list[tuple[str, str, str]]:
    """``(ENV_NAME, default, description)`` of every setting (for the README and --help)."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        rows.append((f"TXWATCH_{name.upper()}", "" if default is None else str(default), field.description or ""))
    return rows
