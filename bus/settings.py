"""Typed settings, read once from the environment at the edge and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bus import defaults
from bus.errors import ConfigError


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def parse_secrets(raw: str) -> tuple[Secret, ...]:
    """Split a comma-separated STRIPE_WEBHOOK_SECRET into its secrets (rotation, Connect)."""
    return tuple(Secret(part.strip()) for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    redis_url: str = defaults.REDIS_URL
    webhook_secrets: tuple[Secret, ...] = ()
    routing_file: Path = Path(defaults.ROUTING_FILE)
    key_prefix: str = defaults.KEY_PREFIX
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    signature_tolerance_s: int = defaults.SIGNATURE_TOLERANCE_S
    seen_retention_s: int = defaults.SEEN_RETENTION_S
    # SEEN_BUCKETS: dedupe sub-buckets per partition and time slice (bus/dedupe.py).
    seen_buckets: int = defaults.SEEN_BUCKETS
    log_level: str = defaults.LOG_LEVEL
    # FANOUT_PARTITIONS: how many partitions each pool's stream is split into (bus/partitions.py).
    partitions: int = defaults.PARTITIONS
    # FANOUT_MIN_REPLICAS: the ingress answers 2xx only once this many replicas have the event.
    min_replicas: int = defaults.MIN_REPLICAS
    # `fanout worker` serves Prometheus metrics on this port when set (FANOUT_METRICS_PORT).
    metrics_port: int | None = None
    # Required by `fanout console` bound anywhere but loopback; then every request must carry it.
    console_token: Secret | None = None
    max_header_bytes: int = defaults.MAX_HEADER_BYTES
    request_read_timeout_s: float = defaults.REQUEST_READ_TIMEOUT_S
    keep_alive_timeout_s: float = defaults.KEEP_ALIVE_TIMEOUT_S
    max_connections: int = defaults.MAX_CONNECTIONS
    max_routing_file_bytes: int = defaults.MAX_ROUTING_FILE_BYTES
    # Everything else a handler may need (destination URLs and secrets, SUPABASE_URL, ...).
    # Kept so handlers read configuration from Settings, not from os.environ directly.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        try:
            return cls(
                redis_url=env.get("REDIS_URL") or defaults.REDIS_URL,
                webhook_secrets=parse_secrets(env.get("STRIPE_WEBHOOK_SECRET", "")),
                routing_file=Path(env.get("ROUTING_FILE") or defaults.ROUTING_FILE),
                key_prefix=env.get("FANOUT_PREFIX") or defaults.KEY_PREFIX,
                max_body_bytes=_positive_int(env, "MAX_BODY_BYTES", defaults.MAX_BODY_BYTES),
                signature_tolerance_s=_positive_int(
                    env, "SIGNATURE_TOLERANCE_S", defaults.SIGNATURE_TOLERANCE_S
                ),
                seen_retention_s=_positive_int(
                    env, "SEEN_RETENTION_S", defaults.SEEN_RETENTION_S
                ),
                seen_buckets=_positive_int(env, "SEEN_BUCKETS", defaults.SEEN_BUCKETS),
                log_level=(env.get("LOG_LEVEL") or defaults.LOG_LEVEL).lower(),
                partitions=_positive_int(env, "FANOUT_PARTITIONS", defaults.PARTITIONS),
                min_replicas=_whole_int(env, "FANOUT_MIN_REPLICAS", defaults.MIN_REPLICAS),
                metrics_port=_port(env, "FANOUT_METRICS_PORT"),
                console_token=Secret(env["FANOUT_CONSOLE_TOKEN"]) if env.get("FANOUT_CONSOLE_TOKEN") else None,
                max_header_bytes=_positive_int(env, "MAX_HEADER_BYTES", defaults.MAX_HEADER_BYTES),
                request_read_timeout_s=_positive_float(
                    env, "REQUEST_READ_TIMEOUT_S", defaults.REQUEST_READ_TIMEOUT_S
                ),
                keep_alive_timeout_s=_positive_float(
                    env, "KEEP_ALIVE_TIMEOUT_S", defaults.KEEP_ALIVE_TIMEOUT_S
                ),
                max_connections=_positive_int(env, "MAX_CONNECTIONS", defaults.MAX_CONNECTIONS),
                max_routing_file_bytes=_positive_int(
                    env, "MAX_ROUTING_FILE_BYTES", defaults.MAX_ROUTING_FILE_BYTES
                ),
                env=env,
            )
        except ValueError as err:
            raise ConfigError(str(err)) from err

    def secret(self, name: str) -> Secret | None:
        """A secret-valued environment variable (destination secrets, service keys)."""
        value = self.env.get(name)
        return Secret(value) if value else None


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _whole_int(env, name, default)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _whole_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def _port(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{name} must be a TCP port (1-65535), got {raw!r}")
    return int(raw)


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be positive and finite, got {raw!r}")
    return value
