"""Prometheus metrics of one ingress process, in a registry of its own (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Webhook latency sits well under 10 ms when healthy; the top buckets catch Redis trouble.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Why the edge guard (ingress/limits.py) closed a connection: the `reason` label of
# fanout_ingress_edge_closed_total. Where it answered first, the reason is the answer's error code.
CLOSE_HEADERS_TOO_LARGE = "headers_too_large"  # 431: the header block was over max_header_bytes
CLOSE_REQUEST_TIMEOUT = "request_timeout"  # 408: part of a request, not all of it within the read timeout
CLOSE_TIMEOUT_NO_ANSWER = "timeout_no_answer"  # read timeout with nothing to answer: no byte yet, or mid-body
CLOSE_AT_CAPACITY = "at_capacity"  # 503: a new connection past the cap while every one had a request
CLOSE_IDLE_AT_CAP = "idle_closed_at_cap"  # the connection idle the longest, closed to make room at the cap
CLOSE_REASONS = (CLOSE_HEADERS_TOO_LARGE, CLOSE_REQUEST_TIMEOUT, CLOSE_TIMEOUT_NO_ANSWER, CLOSE_AT_CAPACITY,
                 CLOSE_IDLE_AT_CAP)
# The lifespan-state key of `IngressMetrics.edge_closed`: uvicorn hands the lifespan state to each
# connection's protocol (`app_state`), which is how the guard, built before the app, reaches its metrics.
EDGE_CLOSED_STATE = "fanout.edge_closed"


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("fanout_ingress_received", "Deliveries received on the webhook route.", registry=r)
        self.rejected = Counter("fanout_ingress_rejected", "Deliveries refused, by error code.", ["code"], registry=r)
        self.duplicates = Counter("fanout_ingress_duplicates", "Deliveries of an event already stored.", registry=r)
        self.published = Counter("fanout_ingress_published", "Events stored in a pool's stream.", ["pool"], registry=r)
        self.unrouted = Counter("fanout_ingress_unrouted", "Stored events that no route matched.", registry=r)
        self.latency = Histogram(
            "fanout_ingress_request_seconds", "Time from request start to answer on the webhook route.",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.reloads = Counter("fanout_routing_reloads", "Routing-table reloads, by outcome.", ["outcome"], registry=r)
        self.table_info = Gauge("fanout_routing_table_info", "The routing-table version in use.", ["version"], registry=r)
        self.edge_closes = Counter("fanout_ingress_edge_closed", "Connections the edge guard closed, by reason.",
                                   ["reason"], registry=r)
        # Every reason is exported from the start (at 0), so a rate over it is never "no data".
        self._edge_closes_by_reason = {reason: self.edge_closes.labels(reason) for reason in CLOSE_REASONS}
        self._rejected_by_code: dict[str, Counter] = {}
        self._published_by_pool: dict[str, Counter] = {}

    def reject(self, code: str) -> None:
        child = self._rejected_by_code.get(code)
        if child is None:
            child = self._rejected_by_code[code] = self.rejected.labels(code)
        child.inc()

    def publish(self, pools: tuple[str, ...]) -> None:
        if not pools:
            self.unrouted.inc()
        for pool in pools:
            child = self._published_by_pool.get(pool)
            if child is None:
                child = self._published_by_pool[pool] = self.published.labels(pool)
            child.inc()

    def edge_closed(self, reason: str) -> None:
        """One connection closed by the edge guard, for `reason` (one of CLOSE_REASONS)."""
        self._edge_closes_by_reason[reason].inc()

    def table_version(self, version: str) -> None:
        self.table_info.clear()
        self.table_info.labels(version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
