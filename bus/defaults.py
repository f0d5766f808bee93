"""Every default in one place, each with its unit in its name."""

from __future__ import annotations

# Redis
REDIS_URL = "redis://127.0.0.1:6379/0"
KEY_PREFIX = "fanout"
# A dead Redis must turn into a 503 quickly so Stripe retries; never hang the request.
REDIS_CONNECT_TIMEOUT_S = 0.5
REDIS_SOCKET_TIMEOUT_S = 1.5
# FANOUT_PARTITIONS: one partition keeps every key in one slot, as before partitions existed.
PARTITIONS = 1
# FANOUT_MIN_REPLICAS: 0 answers 2xx once the primary has the event (Redis replicates async).
MIN_REPLICAS = 0
# With FANOUT_MIN_REPLICAS, how long the ingress's WAIT may take (inside its 1.5 s publish budget).
REPLICA_WAIT_MS = 500
# `fanout partitions resize`: how many dedupe records one SCAN/copy round handles.
RESIZE_BATCH = 500

# Ingress
ROUTING_FILE = "routing.yaml"
MAX_BODY_BYTES = 1024 * 1024
# Stripe's own SDK default; an older signed request is treated as a replay.
SIGNATURE_TOLERANCE_S = 300
HOST = "127.0.0.1"
PORT = 8000
WEBHOOK_PATH = "/webhooks/stripe"
# How often a running process looks at ROUTING_FILE for changes.
RELOAD_POLL_S = 0.5

# Dedupe: Stripe retries for up to three days, so remember an event id for a week.
SEEN_RETENTION_S = 7 * 24 * 3600

LOG_LEVEL = "info"

# The secret `fanout run` and `fanout send` share when nothing is configured.
# It only ever signs local test traffic: never use it in production.
DEV_WEBHOOK_SECRET = "whsec_fanout_local_development_only"

# Workers
# How long one XREADGROUP waits for new entries; also the worst-case delay before a
# SIGTERM is noticed by the reading loop.
BLOCK_MS = 1000
# How often a pool looks for pending entries ready to retry (capped by backoff_base_s / 2).
RECLAIM_INTERVAL_S = 1.0
# An `executor: rq` pool's reclaim pass looks at every pending entry (their jobs may wait in
# RQ by the thousand) only this often, for jobs lost or killed before recording a failure;
# failed attempts that recorded their retry time are looked at on every pass.
RQ_FULL_SCAN_INTERVAL_S = 10.0
# An RQ job is given ceil(timeout_s) plus this: the job enforces timeout_s on the handlers itself
# and keeps the rest to record the outcome; RQ's own hard timeout is only the backstop.
RQ_RECORDING_MARGIN_S = 5
# A job still `started` this long past its start plus its RQ timeout was abandoned (its worker
# died: RQ itself notices only in a maintenance pass, every 10 minutes).
RQ_ABANDONED_MARGIN_S = 5.0
# A reclaim or trim pass that fails with an unexpected error is logged and tried again after this.
BACKGROUND_FAILURE_BACKOFF_S = 1.0
# How many pending entries one reclaim pass inspects per XPENDING call.
RECLAIM_PAGE_SIZE = 500
# A peer's pending entry is claimed once idle for timeout_s + its backoff + this margin:
# long enough that a live, slow handler is never raced by a second consumer.
CLAIM_MARGIN_S = 2.0
# How often a pool trims its stream by age (XTRIM MINID) and prunes long-gone consumers.
TRIM_INTERVAL_S = 60.0
# A consumer with nothing pending and idle this long is removed from the group.
CONSUMER_PRUNE_IDLE_S = 3600.0
# After SIGTERM, in-flight handler calls get this long to finish before the process exits
# (what is unfinished stays pending and is claimed by a peer).
SHUTDOWN_GRACE_S = 25.0
# A pool's options when routing.yaml says nothing (bus/routing_table.PoolConfig).
POOL_CONCURRENCY = 16
MAX_ATTEMPTS = 10
HANDLER_TIMEOUT_S = 30.0
# Retry backoff: exponential from about 1 s, capped at 10 min.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 600.0
# How long a pool's stream keeps entries (XTRIM MINID): as long as the dedupe remembers an id.
STREAM_RETENTION_S = 7 * 24 * 3600
POOL_EXECUTOR = "async"
# The ledger of handlers done for a partly failed entry lives at most this long.
LEDGER_TTL_S = 7 * 24 * 3600
# `fanout worker --processes N`: a child that exits unexpectedly is restarted after this.
RESPAWN_DELAY_S = 1.0
# The forward: handler's request timeout when the destination sets none.
FORWARD_TIMEOUT_S = 10.0
# In --burst mode the reader waits less per XREADGROUP, so it notices "drained" sooner.
BURST_BLOCK_MS = 100

# The Stripe API: `fanout reconcile` (bus/stripe_events.py) and handlers' ctx.stripe (workers/stripe_api.py).
# STRIPE_API_BASE overrides the address, for tests and proxies.
STRIPE_API_BASE = "https://api.stripe.com"
# Stripe allows 25 read requests per second in live mode by default: stay under it per process.
STRIPE_API_RATE_PER_S = 25.0
# A handler's request waits at most this long (the pool's timeout_s bounds the whole handler).
STRIPE_API_TIMEOUT_S = 10.0
# A handler's 429 is retried this many times (waiting its Retry-After), then RetryLater.
STRIPE_API_429_RETRIES = 3
# The longest Retry-After waited for inside a handler; a longer one becomes RetryLater.
STRIPE_API_MAX_WAIT_S = 10.0
# `fanout reconcile`: the largest page the Events API serves, and each request's timeout.
STRIPE_EVENTS_PAGE_LIMIT = 100
STRIPE_EVENTS_TIMEOUT_S = 30.0
# A 429, a 5xx or a transport error is retried this many times, then the command stops.
STRIPE_API_MAX_RETRIES = 6
# Waits between retries without a Retry-After: doubling from the base, capped.
STRIPE_API_BACKOFF_BASE_S = 1.0
STRIPE_API_BACKOFF_MAX_S = 30.0
# A Retry-After longer than this is not waited for in full.
STRIPE_API_RETRY_AFTER_MAX_S = 60.0
# Redis gets this long to store one page of reconciled events.
RECONCILE_PUBLISH_BUDGET_S = 10.0
# forward: reads at most this much of a destination's answer (the rest is never read: the
# connection is dropped), and quotes at most FORWARD_ERROR_QUOTE_CHARS of it in an error.
FORWARD_BODY_READ_BYTES = 2048
FORWARD_ERROR_QUOTE_CHARS = 300
# A forward waits at most this long for one of its destination's concurrency slots; then the
# entry is paused (runs again later, without spending an attempt) and frees its pool slot. Short:
# while it waits it holds a pool slot, so under a backlog for a busy destination, a long wait
# here would delay every other destination's entries behind it.
FORWARD_SLOT_WAIT_S = 0.05
# ... and at most this long for its rate token (while holding a destination slot, so at most the
# destination's concurrency of pool slots wait so).
FORWARD_RATE_WAIT_S = 1.0
# How long such a paused entry waits before it runs again (at least: the reclaimer's pace).
FORWARD_BUSY_DEFER_S = 1.0
# A destination's circuit breaker opens after this many failed forwards (5xx, 408, 429, timeouts,
# connection errors) within FORWARD_BREAKER_WINDOW_S, when they are at least half of its answers;
# it stays open FORWARD_BREAKER_OPEN_S, then lets one probe through (half-open).
FORWARD_BREAKER_FAILURES = 5
FORWARD_BREAKER_WINDOW_S = 30.0
FORWARD_BREAKER_OPEN_S = 30.0
