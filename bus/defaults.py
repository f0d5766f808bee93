"""Every default in one place, each with its unit in its name."""

from __future__ import annotations

# Redis
REDIS_URL = "redis://127.0.0.1:6379/0"
KEY_PREFIX = "fanout"
# A dead Redis must turn into a 503 quickly so Stripe retries; never hang the request.
REDIS_CONNECT_TIMEOUT_S = 0.5
REDIS_SOCKET_TIMEOUT_S = 1.5

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
