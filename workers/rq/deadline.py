"""The RQ job's own timeout: stop its handlers at timeout_s, inside the job, before RQ's alarm.

Sync handlers run inline in the job's thread (`INLINE`), where SIGALRM can
interrupt a blocking call; RQ's own hard timeout is only a backstop.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from types import FrameType
from typing import ParamSpec, TypeVar

from rq.timeouts import JobTimeoutException

P = ParamSpec("P")
T = TypeVar("T")


class HandlerTimeout(BaseException):
    """Raised in the job's thread when its handlers ran past timeout_s.

    A BaseException, unlike RQ's JobTimeoutException: a handler's `except Exception` cannot
    swallow it, so a timeout is always a failed attempt.
    """


# Past timeout_s, the job's alarm fires again this often while a handler still runs (one that
# caught even a BaseException).
TIMEOUT_REFIRE_S = 1.0
# The job's alarm fires this long after timeout_s, so an async handler's own asyncio timeout
# (exactly timeout_s) reports it first.
TIMEOUT_SLACK_S = 0.2


@contextmanager
def handler_deadline(timeout_s: float) -> Iterator[None]:
    """Stop the handlers at timeout_s with HandlerTimeout (SIGALRM), and cancel RQ's alarm on the way out.

    RQ's own hard timeout (the job timeout: ceil(timeout_s) + RQ_RECORDING_MARGIN_S) shares the
    process's one real-time timer: it is replaced here for the handlers, and cancelled, with
    ours, before the job records its outcome. Outside the main thread (no signals) the handlers'
    own asyncio timeouts are all there is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum: int, frame: FrameType | None) -> None:
        signal.setitimer(signal.ITIMER_REAL, TIMEOUT_REFIRE_S)
        raise HandlerTimeout(f"the handlers ran past timeout_s ({timeout_s} s)")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s + TIMEOUT_SLACK_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Inline(Executor):
    """Runs a sync handler right away, in the job's thread, where RQ's timeout can interrupt it."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except JobTimeoutException:
            raise
        except Exception as err:
            future.set_exception(err)
        return future


INLINE = _Inline()
