"""The flags of ``lifecycle run`` (and ``check``): one per settings field, each showing its env var and default."""

from __future__ import annotations

import argparse

from pipelines.settings import Settings

# flag -> settings field, for `run`
_RUN_FLAGS: dict[str, str] = {
    "--input": "input",
    "--store": "store",
    "--model": "model_dir",
    "--device": "device",
    "--shards": "shards",
    "--batch-events": "batch_events",
    "--metrics-host": "metrics_host",
    "--metrics-port": "metrics_port",
    "--recovery-dir": "recovery_dir",
    "--epoch-seconds": "epoch_seconds",
    "--allowed-lateness-seconds": "allowed_lateness_seconds",
    "--taxonomy": "taxonomy",
    "--playbook": "playbook",
    "--idle-advance-seconds": "idle_advance_seconds",
    "--kafka-connect-timeout-seconds": "kafka_connect_timeout_seconds",
    "--processes": "processes",
    "--process-id": "process_id",
    "--addresses": "addresses",
    "--sim-users": "sim_users",
    "--sim-days": "sim_days",
    "--sim-seed": "sim_seed",
}


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """One flag per field of :data:`_RUN_FLAGS`, its help naming the default and the ``LIFECYCLE_*`` env var."""
    fields = Settings.model_fields
    for flag, name in _RUN_FLAGS.items():
        f = fields[name]
        p.add_argument(
            flag,
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{f.description} (default: {f.default}) [env: LIFECYCLE_{name.upper()}]",
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings: ``LIFECYCLE_*`` env vars, overridden by the flags that were given."""
    given = {name: getattr(args, name, None) for name in _RUN_FLAGS.values()}
    return Settings(**{k: v for k, v in given.items() if v is not None})
