"""Every Redis key and group name, built in one place.

Every key that belongs to one event (its dedupe record, its entry in each routed
pool's stream, the ledger, retry times, dead letters, and the counters the
publish and dead-letter scripts bump) carries its partition's hash tag, so each
script touches one Redis Cluster slot and a fan-out to several pools stays one
atomic step. With one partition the tag is ``{prefix}`` (the names of every
deployment before partitions existed); with N > 1, partition p is tagged
``{prefix:p}``. Deployment-wide keys (the layout meta, forward destinations' breakers
and rate limits) use ``{prefix}``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "fanout"
    # The partition count these keys are laid out for (see bus/partitions.py).
    partitions: int = 1

    def tag(self, p: int = 0) -> str:
        """The hash tag of partition p; `{prefix}` when there is only one partition."""
        if self.partitions == 1:
            return "{" + self.prefix + "}"
        return "{" + f"{self.prefix}:{p}" + "}"

    @property
    def _base(self) -> str:
        return "{" + self.prefix + "}"

    def seen(self, event_id: str, p: int = 0) -> str:
        """Dedupe marker for one Stripe event id, in the event's partition."""
        return f"{self.tag(p)}:seen:{event_id}"

    def stream(self, pool: str, p: int = 0) -> str:
        """The stream a pool consumes, for partition p."""
        return f"{self.tag(p)}:stream:{pool}"

    def streams(self, pool: str) -> tuple[str, ...]:
        """The pool's stream of every partition, in partition order."""
        return tuple(self.stream(pool, p) for p in range(self.partitions))

    def group(self, pool: str) -> str:
        """The consumer group of a pool on each of its streams."""
        return pool

    def dead(self, pool: str, p: int = 0) -> str:
        """The pool's dead-letter stream for partition p."""
        return f"{self.tag(p)}:dead:{pool}"

    def ledger(self, pool: str, event_id: str, p: int = 0) -> str:
        """Handlers that already succeeded for (event, pool), so a retry skips them."""
        return f"{self.tag(p)}:done:{pool}:{event_id}"

    def retry_at(self, pool: str, p: int = 0) -> str:
        """Hash: stream entry id -> earliest retry time in ms, for handlers that asked RetryLater(defer_s)."""
        return f"{self.tag(p)}:retry_at:{pool}"

    def uncounted(self, pool: str, p: int = 0) -> str:
        """Hash: stream entry id -> runs that ended Paused, which the delivery count must not count."""
        return f"{self.tag(p)}:uncounted:{pool}"

    def breaker(self, destination: str) -> str:
        """Hash: a forward destination's circuit breaker (failures in the window, open until, probe)."""
        return f"{self._base}:breaker:{destination}"

    def destination_rate(self, destination: str) -> str:
        """A forward destination's rate limit: the time, in µs, its next request may be sent."""
        return f"{self._base}:rate:{destination}"

    def pool_stats(self, pool: str, p: int = 0) -> str:
        """Counters of a pool (processed, failed, retried, dead) for partition p; readers sum them."""
        return f"{self.tag(p)}:stats:pool:{pool}"

    def ingress_stats_of(self, p: int) -> str:
        """Counters of the ingress (published, duplicates, unrouted) for partition p; readers sum them."""
        return f"{self.tag(p)}:stats:ingress"

    @property
    def ingress_stats(self) -> str:
        """The ingress counters of partition 0 (all of them when there is one partition)."""
        return self.ingress_stats_of(0)

    @property
    def meta(self) -> str:
        """Deployment-wide hash: the partition layout (bus/partitions.py)."""
        return f"{self._base}:meta"

    def pattern(self) -> str:
        """A SCAN pattern that matches every key of this prefix, in every partition (tests, cleanup)."""
        return "{" + self.prefix + "[}:]*"
