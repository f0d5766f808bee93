"""The RQ executor: a pool with `executor: rq` runs each stream entry as an RQ job.

queue.py names queues and jobs and enqueues; bridge.py is the executor side inside the pool's
stream consumer; job.py is what an RQ worker runs; settings.py is `rq worker -c workers.rq.settings`.
"""
