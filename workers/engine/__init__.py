"""The consumer engine of a pool: reading, slots, reclaim, trimming, draining, and entry outcomes.

Where an owned entry's handlers run is the executor's business
(workers/engine/executor.py): in this process (async_executor.py) or as an
RQ job (workers/rq/). An `ordering: object` pool adds ordering.py (per-object
FIFOs) and lease.py (one reader per stream); the stale guard lives in
workers/newest.py, next to the handler context that exposes it.
"""
