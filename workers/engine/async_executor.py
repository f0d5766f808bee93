"""The async executor: an entry's handlers run in this process, on its event loop.

Async handlers run on the loop; sync handlers in the consumer's thread pool, so
a blocking client cannot stall the other in-flight entries. What an attempt
leaves behind is written by workers/engine/outcomes.py, as for RQ jobs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bus.envelope import Event
from workers.context import Context
from workers.engine import observer as outcome
from workers.engine import reclaim
from workers.engine.executor import Entry, Owner
from workers.engine.failures import Failure
from workers.engine.outcomes import dead_reason
from workers.engine.reclaim import Due
from workers.handlers import call_handler
from workers.newest import Newest
from workers.rq.queue import STARTED, abandoned_jobs, job_id, job_states, queue_name
from workers.stream_ops import text
from workers.timeouts import HandlerTimeouts

Result = tuple[str, Failure | None, float]


class AsyncExecutor:
    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.timeouts = HandlerTimeouts()  # one timer for all the handler calls in flight here

    def lost_attempt_error(self, attempt: int) -> str:
        return f"a consumer stopped during attempt {attempt}"

    def close(self) -> None:
        pass

    async def run(self, entry: Entry, event: Event, newest: Newest | None) -> None:
        owner = self.owner
        # Paused runs are not attempts: handlers, max_attempts and the backoff count the others.
        config, table, attempt = owner.config, owner.holder.table, entry.counted_attempt
        redelivered = entry.attempt > 1
        ledger_key = owner.outcomes.part(entry.stream).ledger(owner.name, event.id) if redelivered else None
        done: set[str] = set()
        if ledger_key is not None:
            members: Any = await owner.redis.smembers(ledger_key)
            done = {text(h) for h in members}
        todo = [h for h in event.handlers if h not in done]
        if not all(owner.handlers.known(h) for h in todo):
            # Named by a newer routing table than this worker's: import off the event loop.
            await owner.handlers.load_async(todo, table)
        log, slots = owner.log, owner.slots.capacity

        def make_ctx(handler: str) -> Context:
            return Context(owner.name, handler, attempt, log, owner.redis, owner.settings, owner.resources,
                           slots, newest, log_fields={"event_id": event.id, "event_type": event.type,
                                                      "handler": handler, "attempt": attempt})

        async def one(name: str) -> Result:
            started = time.perf_counter()
            failure = await call_handler(owner.handlers.get(name, table), name, event, make_ctx,
                                         config.timeout_s, owner.thread_pool, timeouts=self.timeouts)
            return name, failure, time.perf_counter() - started

        # One handler (the common case) is awaited directly: gather would wrap it in another task.
        results = [await one(todo[0])] if len(todo) == 1 else list(await asyncio.gather(*map(one, todo)))
        failures = [f for _, f, _ in results if f is not None]
        if not failures:
            owner.outcomes.succeeded(entry.stream, entry.entry_id, ledger_key, newest)
            self._report(results, outcome.OK)
            return
        reason = dead_reason(failures, attempt, config.max_attempts)
        if reason is not None:
            dead = await owner.outcomes.dead_letter(
                entry.stream, entry.entry_id, entry.fields, reason=reason, failures=failures, attempts=attempt,
                ledger_key=ledger_key, failed=len(failures))
            self._report(results, outcome.DEAD if dead else outcome.TAKEN_OVER)
            return
        failed = {f.handler for f in failures}
        ledger_key = ledger_key or owner.outcomes.part(entry.stream).ledger(owner.name, event.id)
        await owner.outcomes.failed(config, entry.entry_id, ledger_key, [h for h in todo if h not in failed],
                                    failures, attempt, entry.stream)
        self._report(results, None)

    def _report(self, results: list[Result], failed_as: str | None) -> None:
        """One observer call per handler call; `failed_as` None: each failure says retry or failed.

        A Paused handler (a RetryLater) reports retry: the five outcomes stay the observer's names.
        """
        observer, pool = self.owner.observer, self.owner.name
        for name, failure, duration_s in results:
            if failure is None:
                kind = outcome.OK
            elif failed_as is not None:
                kind = failed_as
            else:
                kind = outcome.RETRY if failure.retry_later else outcome.FAILED
            observer.handler_finished(pool, name, kind, duration_s)

    async def reclaim(self, stream: str, limit: int) -> int:
        due = await reclaim.due_entries(self.owner, stream, limit)
        due = await self._not_running_in_rq(await reclaim.not_deferred(self.owner, stream, due))
        return await reclaim.claim(self.owner, stream, due)

    async def _not_running_in_rq(self, due: list[Due]) -> list[Due]:
        """Drop entries whose current attempt is running as an RQ job in a live worker.

        Only after a pool switched from `executor: rq` to async: an RQ worker may still be running
        an entry's job, and taking the entry over would run it twice at once. A job still queued
        needs no such care (it runs nothing once the entry was taken over: workers/rq/job.py),
        nor one whose worker is gone (workers/rq/queue.abandoned_jobs). One round trip per pass
        that found due entries.
        """
        if not due:
            return due
        owner = self.owner
        prefix = owner.settings.key_prefix
        ids = [job_id(prefix, owner.name, entry_id, delivered) for entry_id, delivered, _ in due]
        states = await job_states(owner.redis, ids)
        started = [jid for jid, state in zip(ids, states, strict=True) if state == STARTED]
        if not started:
            return due
        abandoned = await abandoned_jobs(owner.redis, queue_name(prefix, owner.name), started, time.time())
        running = set(started) - abandoned
        return [d for d, jid in zip(due, ids, strict=True) if jid not in running]

    async def drained(self, stream: str) -> bool:
        groups: Any = await self.owner.redis.xinfo_groups(stream)
        for group in groups:
            if text(group["name"]) == self.owner.group:
                lag = group.get("lag")
                return int(group["pending"]) == 0 and (lag is None or int(lag) == 0)
        return True
