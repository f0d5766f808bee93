"""What is already done for an event a replay copies: the copy's mark, the ledger, its dead letters.

A dead letter is the only record of what succeeded for an event once it was
dead-lettered: the ack that dead-lettered it deleted the completion ledger, and
the stream entry the ingress wrote still names every handler. A replay that
ignored it would run the handlers that had succeeded a second time.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from bus.envelope import F_DONE, F_HANDLERS, F_ID, HANDLER_SEPARATOR
from bus.partitions import Partition
from workers.engine.failures import F_FAILED_HANDLERS
from workers.stream_ops import Fields, text

# The dead-letter stream is read in pages of this many entries.
DEAD_PAGE_SIZE = 1000


def handler_names(value: Any) -> list[str]:
    """A handler-list field (`a,b`) as names."""
    return [h for h in text(value).split(HANDLER_SEPARATOR) if h]


def dead_letter_done(fields: Fields) -> set[str]:
    """The handlers a dead letter records as done: its stored ones that did not fail, and its mark."""
    done = set(handler_names(fields.get(F_DONE.encode())))
    failed = handler_names(fields.get(F_FAILED_HANDLERS.encode()))
    if failed:  # a dead letter without failed handlers (malformed, trimmed) says nothing succeeded
        done.update(h for h in handler_names(fields.get(F_HANDLERS.encode())) if h not in failed)
    return done


async def dead_letters_by_event(redis: aioredis.Redis, keys: Partition, pool: str,
                                event_ids: set[str]) -> dict[str, list[tuple[str, Fields]]]:
    """The partition's dead letters of `event_ids`, by event id (one scan of its dead-letter stream)."""
    found: dict[str, list[tuple[str, Fields]]] = {}
    if not event_ids:
        return found
    start = "-"
    while True:
        page: Any = await redis.xrange(keys.dead(pool), min=start, count=DEAD_PAGE_SIZE)
        for dead_id, fields in page:
            event = text(fields.get(F_ID.encode()))
            if event in event_ids:
                found.setdefault(event, []).append((text(dead_id), fields))
        if len(page) < DEAD_PAGE_SIZE:
            return found
        start = "(" + text(page[-1][0])


async def ledger_done(redis: aioredis.Redis, keys: Partition, pool: str, event_id: str) -> set[str]:
    """What the completion ledger holds as succeeded for an entry still being retried."""
    ledger: Any = await redis.smembers(keys.ledger(pool, event_id))
    return {text(h) for h in ledger}
