"""Every Redis key and group name, built in one place.

All keys of one deployment share the hash tag ``{prefix}``, so the publish
script (which touches the dedupe key and every routed pool stream) stays in
one Redis Cluster slot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "fanout"

    @property
    def _base(self) -> str:
        return "{" + self.prefix + "}"

    def seen(self, event_id: str) -> str:
        """Dedupe marker for one Stripe event id."""
        return f"{self._base}:seen:{event_id}"

    def stream(self, pool: str) -> str:
        """The stream a pool consumes."""
        return f"{self._base}:stream:{pool}"

    def group(self, pool: str) -> str:
        """The consumer group of a pool on its stream."""
        return pool

    def dead(self, pool: str) -> str:
        """The pool's dead-letter stream."""
        return f"{self._base}:dead:{pool}"

    def ledger(self, pool: str, event_id: str) -> str:
        """Handlers that already succeeded for (event, pool), so a retry skips them."""
        return f"{self._base}:done:{pool}:{event_id}"

    def retry_at(self, pool: str) -> str:
        """Hash: stream entry id -> earliest retry time in ms, for handlers that asked RetryLater(defer_s)."""
        return f"{self._base}:retry_at:{pool}"

    def heartbeats(self, pool: str) -> str:
        """Sorted set: consumer name -> last time (ms) that worker process was seen alive."""
        return f"{self._base}:alive:{pool}"

    def pool_stats(self, pool: str) -> str:
        """Counters of a pool (processed, failed, retried, dead) that outlive processes."""
        return f"{self._base}:stats:pool:{pool}"

    @property
    def ingress_stats(self) -> str:
        """Counters of the ingress (received, duplicates, unrouted) that outlive processes."""
        return f"{self._base}:stats:ingress"

    def pattern(self) -> str:
        """A SCAN pattern that matches every key of this prefix (used by tests and cleanup)."""
        return f"{self._base}:*"
