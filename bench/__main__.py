"""`python -m bench [NAME ...]`: run every bench/bench_*.py module's main(), or the ones named.

Unless BENCH_REDIS_URL names a Redis, the benchmarks share a redis-server of their own
(persistence off), started here and stopped at the end: on a shared machine, the
Redis that tests and other processes use adds their load to every figure (measured:
the worker no-op rate moved from about 20k to 27k events/s between the two).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import sys

import bench


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    wanted = [f"bench_{n.removeprefix('bench_')}" for n in argv] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(names)}", file=sys.stderr)
        return 2
    status = 0
    with contextlib.ExitStack() as stack:
        if not os.environ.get("BENCH_REDIS_URL"):
            from bench.bench_partitions import private_redis

            os.environ["BENCH_REDIS_URL"] = stack.enter_context(private_redis())
            print(f"benchmarks use a redis-server of their own at {os.environ['BENCH_REDIS_URL']}", flush=True)
        for name in wanted:
            print(f"\n=== {name} ===", flush=True)
            status |= importlib.import_module(f"bench.{name}").main()
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
