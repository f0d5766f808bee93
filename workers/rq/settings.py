"""RQ settings for the workers of `executor: rq` pools: `rq worker POOL -c workers.rq.settings ...`.

RQ reads the upper-case names of this module in the worker's main process; the
import also loads the job function, the routing table and the handlers it names
there, so every work horse RQ forks starts with them instead of importing them
for its one job (see `make bench`: most of a forking worker's cost per job).
"""

from __future__ import annotations

import os

from bus import defaults
from workers.rq.job import warm_up

# The Redis that holds the pools' streams, as for `fanout worker` (`--url` still wins).
REDIS_URL = os.environ.get("REDIS_URL") or defaults.REDIS_URL

warm_up()
