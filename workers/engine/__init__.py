"""The consumer engine of a pool: reading, slots, reclaim, trimming, draining, and entry outcomes.

Where an owned entry's handlers run is the executor's business
(workers/engine/executor.py): in this process (async_executor.py) or as an
RQ job (workers/rq/).
"""
