"""What the engine does with an owned entry before its executor runs it.

A malformed entry, and one past max_attempts (the consumer or RQ job running
its last allowed attempt stopped before it finished), are dead-lettered here,
the same way whatever the executor. In a `skip_stale: true` pool, an entry older
than its object's newest completed event (workers/newest.py) is acked here
without running, counted `stale`. Every other entry goes to the executor.
A redelivered entry's paused runs (workers/engine/outcomes.py) are read here:
they are not attempts, so they do not bring it closer to max_attempts. An entry
run as attempt 2 or later is counted `retried` here, whichever executor runs it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bus.envelope import Event
from workers.engine.executor import Entry, Executor, Owner
from workers.engine.failures import REASON_MALFORMED, REASON_MAX_ATTEMPTS, Failure
from workers.engine.observer import STALE
from workers.engine.outcomes import lost_attempt_failures
from workers.newest import Newest
from workers.stream_ops import text


async def run_entry(owner: Owner, executor: Executor, entry: Entry) -> None:
    try:
        event = Event.from_entry(entry.fields)
    except (ValueError, KeyError) as err:  # UnicodeDecodeError is a ValueError
        failure = Failure("", f"{type(err).__name__}: {err}", "", permanent=True)
        await owner.outcomes.dead_letter(entry.stream, entry.entry_id, entry.fields, reason=REASON_MALFORMED,
                                         failures=[failure], attempts=entry.attempt)
        return
    config = owner.config
    newest = Newest.of(owner.keys, owner.name, entry.stream, event, owner.now_ms() / 1000) if config.skip_stale else None
    if newest is not None and await newest.stale(owner.redis):
        owner.outcomes.stale(entry.stream, entry.entry_id,
                             owner.outcomes.part(entry.stream).ledger(owner.name, event.id) if entry.attempt > 1 else None)
        for handler in event.handlers:
            owner.observer.handler_finished(owner.name, handler, STALE, 0.0)
        owner.log.info("entry.stale", entry_id=entry.entry_id, event_id=event.id, event_type=event.type,
                       created=event.created)
        return
    if entry.attempt > 1:
        paused: Any = await owner.redis.hget(owner.outcomes.part(entry.stream).uncounted(owner.name), entry.entry_id)
        if paused:
            entry = dataclasses.replace(entry, paused_runs=int(paused))
    last = entry.counted_attempt - 1
    if last >= config.max_attempts:
        ledger_key = owner.outcomes.part(entry.stream).ledger(owner.name, event.id)
        members: Any = await owner.redis.smembers(ledger_key)
        failures = lost_attempt_failures(event.handlers, {text(h) for h in members},
                                         executor.lost_attempt_error(last))
        await owner.outcomes.dead_letter(entry.stream, entry.entry_id, entry.fields, reason=REASON_MAX_ATTEMPTS,
                                         failures=failures, attempts=last, ledger_key=ledger_key)
        return
    if entry.counted_attempt > 1:  # a retry attempt; if it ends Paused it was not one (outcomes.py takes it back)
        owner.outcomes.count("retried", 1, entry.stream)
    await executor.run(entry, event, newest)

