"""`python -m bench [NAME...]`: run the named benchmarks (all by default) and print their figures.

A benchmark is a module `bench/bench_<name>.py` with `main() -> dict`; its
figures are printed and written to bench/results/<name>.json.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(HERE)])
                  if m.name.startswith("bench_"))


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}",
              file=sys.stderr)
        return 2
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    for name in names:
        print(f"== bench {name}", flush=True)
        figures = importlib.import_module(f"bench.bench_{name}").main()
        (results_dir / f"{name}.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
