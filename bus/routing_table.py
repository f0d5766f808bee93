"""The routing table: frozen, validated by bus/routing.py, and matched per event type.

Matching: an exact event type wins, then the longest wildcard prefix
(``customer.*`` matches ``customer.subscription.created``), then ``*``. A
bracketed sub-resource counts as a segment of its resource (``v2.core.account.*``
matches ``v2.core.account[requirements].updated``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bus import defaults

MatchKind = Literal["exact", "wildcard", "catch-all"]


@dataclass(frozen=True)
class PoolConfig:
    name: str
    concurrency: int = defaults.POOL_CONCURRENCY
    max_attempts: int = defaults.MAX_ATTEMPTS
    timeout_s: float = defaults.HANDLER_TIMEOUT_S
    backoff_base_s: float = defaults.BACKOFF_BASE_S
    backoff_max_s: float = defaults.BACKOFF_MAX_S
    retention_s: int = defaults.STREAM_RETENTION_S
    executor: str = defaults.POOL_EXECUTOR


@dataclass(frozen=True)
class Destination:
    name: str
    url_env: str
    secret_env: str
    timeout_s: float = defaults.FORWARD_TIMEOUT_S
    # Forwards in flight at once per worker process; None: half the pool's concurrency (at least 1).
    concurrency: int | None = None
    # Forwards per second across the deployment; None: unlimited.
    rate_per_s: float | None = None
    # The circuit breaker (workers/forward/breaker.py); defaults in bus/defaults.py.
    breaker_failures: int = defaults.FORWARD_BREAKER_FAILURES
    breaker_window_s: float = defaults.FORWARD_BREAKER_WINDOW_S
    breaker_open_s: float = defaults.FORWARD_BREAKER_OPEN_S


@dataclass(frozen=True)
class Route:
    pattern: str
    kind: MatchKind
    # (pool, handlers) pairs, in the order they are written.
    targets: tuple[tuple[str, tuple[str, ...]], ...]
    line: int


@dataclass(frozen=True)
class RouteMatch:
    event_type: str
    route: Route | None

    @property
    def targets(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return self.route.targets if self.route else ()

    @property
    def pools(self) -> tuple[str, ...]:
        return tuple(pool for pool, _ in self.targets)


@dataclass(frozen=True)
class RoutingTable:
    pools: dict[str, PoolConfig]
    destinations: dict[str, Destination]
    routes: tuple[Route, ...]
    version: str
    source: str
    warnings: tuple[str, ...] = ()
    _exact: dict[str, Route] = field(default_factory=dict, repr=False, compare=False)
    # Longest prefix first, so the first hit is the most specific wildcard.
    _wildcards: tuple[tuple[str, Route], ...] = field(default=(), repr=False, compare=False)
    _catch_all: Route | None = field(default=None, repr=False, compare=False)
    _cache: dict[str, RouteMatch] = field(default_factory=dict, repr=False, compare=False)

    def secret_env_names(self) -> tuple[str, ...]:
        """The variables holding the destinations' signing secrets: bus/redaction.py strips their values."""
        return tuple(d.secret_env for d in self.destinations.values())

    def match(self, event_type: str) -> RouteMatch:
        """The route that wins for `event_type` (route is None when nothing matches)."""
        hit = self._cache.get(event_type)
        if hit is not None:
            return hit
        route = self._exact.get(event_type)
        if route is None:
            # A bracketed sub-resource belongs to its resource: v2.core.account.* matches
            # v2.core.account[requirements].updated (and v2.core.account[requirements].* too).
            dotted = event_type.replace("[", ".") if "[" in event_type else event_type
            for prefix, candidate in self._wildcards:
                if event_type.startswith(prefix) or dotted.startswith(prefix):
                    route = candidate
                    break
            else:
                route = self._catch_all
        hit = RouteMatch(event_type, route)
        # Only verified Stripe events reach here, so the set of types is small;
        # the bound is a guard, not a tuning knob.
        if len(self._cache) < 4096:
            self._cache[event_type] = hit
        return hit
