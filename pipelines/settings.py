"""One frozen settings object for the whole pipeline, read from ``LIFECYCLE_*`` env vars.

CLI flags override fields (see :mod:`pipelines.cli.main`, which shows the env var
behind every flag). Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.core.playbook import Playbook, load_playbook
from pipelines.core.taxonomy import Taxonomy, load_taxonomy
from pipelines.io.kafka.url import parse_kafka_start, parse_kafka_url
from pipelines.io.store.retry import RetryPolicy

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "artifacts" / "default"
DEFAULT_SQL = Path(__file__).resolve().parent.parent / "sql" / "migrations"


class Settings(BaseSettings):
    """Pipeline configuration. Every field is env var ``LIFECYCLE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LIFECYCLE_", frozen=True, extra="ignore")

    input: str = Field(
        "simulate",
        description="simulate | PATH[,PATH...] (.jsonl[.gz], .csv[.gz], .parquet) | kafka://HOST:PORT/TOPIC",
    )
    store: str = Field("chdb://./data/lifecycle.chdb", description="chdb://PATH or http(s)://HOST:PORT/DB")
    store_user: str = Field("default", description="ClickHouse server user (http store)")
    store_password: SecretStr = Field(SecretStr(""), description="ClickHouse server password (http store)")
    store_ca_file: str | None = Field(
        None, description="CA certificate file that signs the https store's certificate (default: the system's)"
    )
    erasure_salt: SecretStr = Field(
        SecretStr(""),
        description="secret key of the HMAC that erasure_log and the suppression list keep instead of user ids",
    )
    store_retry_initial_seconds: float = Field(
        0.5, gt=0, description="first wait before retrying an insert while the store is unavailable (doubles per retry)"
    )
    store_retry_max_seconds: float = Field(
        10.0, gt=0, description="longest wait between insert retries while the store is unavailable (jittered)"
    )
    store_max_outage_seconds: float = Field(
        0.0,
        ge=0,
        description="give up (stop the worker) once the store has been unavailable this long (0 = wait forever)",
    )
    model_dir: Path = Field(DEFAULT_MODEL, description="model artifact directory")
    sql_dir: Path = Field(DEFAULT_SQL, description="directory of numbered .sql migrations")
    device: str = Field("auto", description="torch device for scoring: auto | cpu | cuda[:N]")
    torch_threads: int = Field(
        1, ge=0, description="intra-op CPU threads for scoring (0 = torch default); 1 avoids thrashing on small hosts"
    )
    metrics_host: str = Field("127.0.0.1", description="bind address of the Prometheus endpoint")
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus port (0 disables)")
    shards: int = Field(4, ge=1, le=4096, description="state shards (Bytewax keys)")
    batch_events: int = Field(20_000, ge=1, description="events per source batch")
    max_batch_bytes: int = Field(
        32 << 20,
        ge=1024,
        description="a source batch (file or Kafka) ends once its payloads hold this many bytes; also bounds the "
        "Kafka client's fetches and queue (fetch.max.bytes, max.partition.fetch.bytes, queued.max.messages.kbytes)",
    )
    max_dead_letter_bytes: int = Field(
        4096, ge=0, description="a dead letter keeps at most this many bytes of its payload (0 = all of it)"
    )
    max_new_users_per_second: int = Field(
        10_000,
        ge=0,
        description="users new to a shard admitted per second of event time; the events of the others are dead "
        "letters new_user_rate (an id flood cannot grow state faster; 0 = no limit)",
    )
    churned_retention_seconds: float = Field(
        180 * 86_400.0,
        ge=0,
        description="churned users whose newest event is this old (event time) are evicted from state and their "
        "rows reused; a later event starts them anew (0 = keep forever)",
    )
    score_batch_rows: int = Field(8192, ge=1, description="max rows per model micro-batch")
    max_event_bytes: int = Field(65_536, ge=64, description="events larger than this are rejected (oversized)")
    max_future_seconds: int = Field(86_400, ge=0, description="events further ahead of the wall clock are rejected")
    clock_skew_seconds: int = Field(
        300,
        ge=0,
        description="the event clock never runs further ahead of the wall clock: later-dated events are applied at it",
    )
    allowed_lateness_seconds: int = Field(6 * 3600, ge=0, description="events older than clock minus this are late")
    score_interval_seconds: float = Field(
        3600.0,
        gt=0,
        description="the event-time tick: users touched by events are evaluated (stage, transitions, playbook "
        "committed) once per tick, at its end (docs/event-time.md)",
    )
    provisional_window_seconds: float = Field(
        86_400.0,
        ge=0,
        description="live freshness: while the stream's event time is within this of the wall clock, users "
        "touched in the open tick are also scored provisionally at once (0 = off)",
    )
    refresh_seconds: float = Field(
        86_400.0, gt=0, description="every live user is re-evaluated at least once per this much event time"
    )
    refresh_churned_seconds: float = Field(
        7 * 86_400.0, gt=0, description="churned users are re-evaluated once per this much event time"
    )
    max_held_events: int = Field(
        4_000_000,
        gt=0,
        description="events waiting for their tick (streams far apart in event time) beyond this force ticks closed",
    )
    dedup_window_seconds: int = Field(
        6 * 3600, gt=0, description="duplicate event_ids are recognised within 1-2 such windows of event time"
    )
    dedup_max_keys: int = Field(4_000_000, gt=0, description="event ids remembered per shard and generation")
    consent_refresh_seconds: float = Field(
        60.0, gt=0, description="re-read the consent table (opt-outs) this often; opted-out users are not scored"
    )
    taxonomy: str = Field(
        "lifecycle-5",
        description="stage taxonomy: a shipped name (lifecycle-5 | aida-5 | groups-4) or a YAML file "
        "(docs/playbooks.md)",
    )
    playbook: str | None = Field(
        None, description="playbook: a shipped name or a YAML file; default: the shipped playbook of the taxonomy"
    )
    idle_advance_seconds: float = Field(
        0.0, ge=0, description="advance shard clocks by wall time after this many idle seconds (live streams; 0 = off)"
    )
    processes: int = Field(1, ge=1, le=256, description="local cluster: start this many Bytewax processes")
    process_id: int | None = Field(None, ge=0, description="this process's index in a cluster (with addresses)")
    addresses: str | None = Field(
        None, description="cluster members host:port,host:port,... in process-id order (Bytewax -a)"
    )
    epoch_seconds: float = Field(10.0, gt=0, description="Bytewax epoch (snapshot) interval")
    recovery_dir: Path | None = Field(
        None,
        description="pipeline state (Bytewax recovery store); default: derived from the store, beside a chDB "
        "directory (PATH.state) or under ./data/state/ for a server",
    )
    persist_state: bool = Field(
        True, description="keep the pipeline state between runs (false: every run starts from empty state)"
    )
    kafka_group: str = Field("lifecycle-scoring", description="Kafka consumer group id")
    kafka_start: str = Field(
        "earliest",
        description="where a new Kafka run starts: earliest | latest | ISO-8601 time with offset | epoch ms "
        "(first record whose Kafka timestamp is at or after it)",
    )
    kafka_config: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='librdkafka options as JSON, e.g. {"security.protocol":"SASL_SSL","sasl.password":"..."}; '
        "values are treated as secrets",
    )
    kafka_connect_timeout_seconds: float = Field(
        10.0,
        ge=0,
        description="`run` and `check` give up with one line when no Kafka broker answers within this (0 = wait)",
    )
    kafka_eof_exit: bool = Field(False, description="stop when every Kafka partition is at its end (tests, backfills)")
    dead_letter_topic: str | None = Field(
        None, description="kafka://HOST:PORT/TOPIC: also write dead letters there (original bytes, headers)"
    )
    transitions_topic: str | None = Field(
        None, description="kafka://HOST:PORT/TOPIC: also write stage transitions there (JSON keyed by user_id)"
    )
    sim_users: int = Field(50_000, ge=1, description="simulated users (--input simulate)")
    sim_days: int = Field(30, ge=1, description="simulated days (--input simulate)")
    sim_seed: int = Field(7, description="simulator seed")

    @model_validator(mode="after")
    def _cluster(self) -> Settings:
        if self.processes > 1 and self.store.startswith("chdb://"):
            raise ValueError(
                f"--processes {self.processes} needs a ClickHouse server store (--store http(s)://HOST:PORT/DB): "
                "chDB allows one process per data directory"
            )
        if (self.addresses is None) != (self.process_id is None):
            raise ValueError("addresses and process_id go together")
        if self.addresses is not None and self.process_id is not None:
            n = len(self.addresses.split(","))
            if self.process_id >= n:
                raise ValueError(f"process_id {self.process_id} is not below the {n} addresses")
            if self.store.startswith("chdb://") and n > 1:
                raise ValueError(
                    "a multi-process run needs a ClickHouse server store (http(s)://...): chDB allows one process "
                    "per data directory"
                )
        return self

    @model_validator(mode="after")
    def _store_retry(self) -> Settings:
        self.store_retry()  # ValueError names the inconsistent pair
        return self

    @field_validator("store")
    @classmethod
    def _store_scheme(cls, v: str) -> str:
        if not v.startswith(("chdb://", "http://", "https://")):
            raise ValueError(f"store must be chdb://PATH or http(s)://HOST:PORT/DB, got {v!r}")
        return v

    @field_validator("kafka_start")
    @classmethod
    def _kafka_start(cls, v: str) -> str:

        parse_kafka_start(v)  # ValueError names the accepted forms
        return v

    @field_validator("dead_letter_topic", "transitions_topic")
    @classmethod
    def _kafka_topic_url(cls, v: str | None) -> str | None:

        if v is not None:
            parse_kafka_url(v)
        return v

    def load_taxonomy(self) -> Taxonomy:
        """The configured taxonomy, validated (:class:`~pipelines.core.rules.RuleError` names file, line, field)."""
        return load_taxonomy(self.taxonomy)

    def load_playbook(self, taxonomy: Taxonomy) -> Playbook:
        """The configured playbook for ``taxonomy`` (by default the shipped one named like the taxonomy)."""
        return load_playbook(self.playbook or taxonomy.name, taxonomy)

    def store_retry(self) -> RetryPolicy:
        """How the sink waits out an unavailable store (:mod:`pipelines.io.store.retry`)."""
        return RetryPolicy(
            initial_backoff_seconds=self.store_retry_initial_seconds,
            max_backoff_seconds=self.store_retry_max_seconds,
            max_outage_seconds=self.store_max_outage_seconds,
        )

    def state_dir(self) -> Path | None:
        """Where the pipeline state lives: ``recovery_dir``, else derived from the store; None when not persisted."""
        if not self.persist_state:
            return None
        if self.recovery_dir is not None:
            return self.recovery_dir
        return derived_state_dir(self.store)


def derived_state_dir(store: str) -> Path:
    """The default state directory of a store: ``PATH.state`` beside a chDB directory, else under ``./data/state/``.

    Derived from the store, never from the input, so every load into one store continues the same state.
    """
    if store.startswith("chdb://"):
        path = Path(store.removeprefix("chdb://"))
        return path.with_name(path.name + ".state")
    parts = urlsplit(store)
    name = f"{parts.hostname or 'localhost'}-{parts.port or 0}-{parts.path.strip('/').replace('/', '_') or 'default'}"
    return Path("data") / "state" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
