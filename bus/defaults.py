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
# A routing file larger than this is refused before it is read: a real one is a few KiB, and
# parsing (and hinting at) tens of MB would cost minutes of CPU and gigabytes per process.
MAX_ROUTING_FILE_BYTES = 1024 * 1024
# Only this many unknown event types get a "did you mean" hint (difflib costs ~1 ms each).
MAX_EVENT_TYPE_HINTS = 20

# The HTTP edge (ingress/limits.py). Stripe's headers are well under 2 KiB.
MAX_HEADER_BYTES = 16 * 1024
# From a request's first byte to the end of its body; Stripe itself gives up after 10 s.
REQUEST_READ_TIMEOUT_S = 10.0
# A connection with no request in progress (fresh, or between keep-alive requests) is closed
# after this: open sockets cost file descriptors and memory, and Stripe reconnects cheaply.
KEEP_ALIVE_TIMEOUT_S = 5.0
# Open connections per server process; the cap is further lowered to leave FD_RESERVE_FRACTION
# of the process's file-descriptor limit for Redis, the routing file and logs.
MAX_CONNECTIONS = 10_000
FD_RESERVE_FRACTION = 0.1
FD_RESERVE_MIN = 64

# Dedupe: Stripe retries for up to three days, so remember an event id for a week.
SEEN_RETENTION_S = 7 * 24 * 3600
# Dedupe records live in one hash per (partition, time slice, sub-bucket) (bus/dedupe.py).
# A slice's hashes expire together, SEEN_RETENTION_S after the slice ends; a publish reads
# every slice that may still be live (8 with these defaults).
SEEN_SLICE_S = 24 * 3600
# SEEN_BUCKETS: sub-buckets per partition and slice. A hash stays a compact listpack up to
# 128 records (Redis's hash-max-listpack-entries), so this suits up to ~100,000 events a day
# per partition; more still works, at ~70 B per record instead of ~21 (README: sizing Redis).
SEEN_BUCKETS = 1024

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
# How often a running consumer reads the recorded partition layout (one HGETALL), so it reads
# the new streams within seconds of `fanout partitions resize` rather than at its next trim.
LAYOUT_CHECK_S = 2.0
# Each worker process refreshes its heartbeat this often; `fanout status` counts as live the
# consumers seen within HEARTBEAT_STALE_S, so a killed worker stops being counted within that.
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_STALE_S = 6.0
# A consumer with nothing pending and idle this long is removed from the group.
CONSUMER_PRUNE_IDLE_S = 3600.0
# After SIGTERM, in-flight handler calls get this long to finish before the process exits
# (what is unfinished stays pending and is claimed by a peer).
SHUTDOWN_GRACE_S = 25.0
# A handler name a worker could not resolve (no such module yet, an import error) is tried again
# after this, so creating or fixing the module mends a running worker without a restart.
UNRESOLVED_RETRY_S = 5.0
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
# `skip_stale: true` acks without running an entry older than its object's newest completed
# event (workers/newest.py); off by default.
POOL_SKIP_STALE = False
# `ordering: object` runs one entry per object at a time, in stream order; "none" does not.
POOL_ORDERING = "none"
# The stale guard remembers an object's newest completed event for one to two windows of this
# length (a bucket per window; Stripe retries an event for up to 3 days).
NEWEST_WINDOW_S = 3 * 24 * 3600
# At most this many objects per (pool, partition, family, window) bucket; objects past it are not
# remembered, so their older events run (the guard never skips what it cannot vouch for).
NEWEST_BUCKET_CAP = 1_000_000
# The ledger of handlers done for a partly failed entry lives at most this long.
LEDGER_TTL_S = 7 * 24 * 3600
# `fanout worker --processes N`: a child that exits unexpectedly is restarted after this.
RESPAWN_DELAY_S = 1.0
# The forward: handler's request timeout when the destination sets none.
FORWARD_TIMEOUT_S = 10.0
# In --burst mode the reader waits less per XREADGROUP, so it notices "drained" sooner.
BURST_BLOCK_MS = 100

# The Stripe API (bus/stripe_http.py), for `fanout reconcile` (bus/stripe_events.py) and handlers'
# ctx.stripe (workers/stripe_api.py).
# STRIPE_API_BASE overrides the address, for tests and proxies.
STRIPE_API_BASE = "https://api.stripe.com"
# Stripe allows 25 read requests per second by default: at most this many in any second, per process
# (reconcile's pager, or a worker process's handlers together).
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
# `fanout reconcile`: a 429, a 5xx or a transport error is retried this many times, then it stops.
STRIPE_API_MAX_RETRIES = 6
# Reconcile's waits between retries without a Retry-After: doubling from the base, capped. The base
# is also the wait for a 429 without a usable Retry-After (reconcile and handlers).
STRIPE_API_BACKOFF_BASE_S = 1.0
STRIPE_API_BACKOFF_MAX_S = 30.0
# Reconcile waits a Retry-After for at most this long (a handler's limit is STRIPE_API_MAX_WAIT_S).
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

# Metrics and the console
# `fanout worker --metrics-port` listens on every interface unless told otherwise (Prometheus
# scrapes from elsewhere); the metrics name pools and handlers, never an event or a secret.
METRICS_HOST = "0.0.0.0"
CONSOLE_HOST = "127.0.0.1"
CONSOLE_PORT = 8001
# The console's rates: one sample of every counter this often, kept this long.
CONSOLE_SAMPLE_INTERVAL_S = 5.0
CONSOLE_RATE_WINDOW_S = 300.0
# The overview page fetches itself again this often.
CONSOLE_REFRESH_S = 5.0
# Looking an event up scans each pool's stream and dead letters, newest first, this far at most.
CONSOLE_SCAN_LIMIT = 20_000
# One dead-letter page lists at most this many; replaying by filter looks at this many letters at most.
CONSOLE_DLQ_PAGE = 100
CONSOLE_DLQ_SCAN_LIMIT = 10_000
# The routes page tries a pasted routing file on the events the streams stored this recently.
CONSOLE_TRAFFIC_WINDOW_S = 24 * 3600.0
