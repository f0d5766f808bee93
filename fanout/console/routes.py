"""The routing page's data: what a pasted routing file would change in the table in use.

`table_diff` compares the two tables themselves: per route pattern, which pools
and handlers differ; per pool, the options; per destination, its settings. What
the change would have done to recorded traffic (per event type seen in the
streams) is bus.routing_diff's, which the page shows beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus import defaults
from bus.errors import ConfigError
from bus.routing import PoolConfig, RoutingTable, parse_routing


@dataclass(frozen=True)
class Change:
    kind: str  # "added", "removed", "changed"
    what: str  # "route customer.*", "pool admin"
    before: str
    after: str


@dataclass(frozen=True)
class PastedDiff:
    changes: list[Change]
    error: str = ""
    version: str = ""
    warnings: tuple[str, ...] = ()
    # The pasted table (None when it is invalid).
    table: RoutingTable | None = None


def _targets(targets: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, tuple[str, ...]]:
    return dict(targets)


def _describe_targets(targets: dict[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{pool}: {', '.join(handlers)}" for pool, handlers in targets.items())


def _options(config: PoolConfig) -> str:
    return ", ".join(f"{k}={v}" for k, v in vars(config).items() if k != "name")


def table_diff(old: RoutingTable, new: RoutingTable) -> list[Change]:
    """Per route pattern, the pools and handlers that differ; per pool, the options that differ."""
    changes: list[Change] = []
    old_routes = {r.pattern: _targets(r.targets) for r in old.routes}
    new_routes = {r.pattern: _targets(r.targets) for r in new.routes}
    for pattern in sorted(old_routes.keys() | new_routes.keys()):
        before, after = old_routes.get(pattern), new_routes.get(pattern)
        if before == after:
            continue
        if before is None and after is not None:
            changes.append(Change("added", f"route {pattern}", "", _describe_targets(after)))
        elif after is None and before is not None:
            changes.append(Change("removed", f"route {pattern}", _describe_targets(before), ""))
        elif before is not None and after is not None:
            for pool in sorted(before.keys() | after.keys()):
                b, a = before.get(pool, ()), after.get(pool, ())
                if b != a:
                    changes.append(Change("changed", f"route {pattern} → {pool}", ", ".join(b) or "(none)",
                                          ", ".join(a) or "(none)"))
    for pool in sorted(old.pools.keys() | new.pools.keys()):
        b_config, a_config = old.pools.get(pool), new.pools.get(pool)
        if b_config == a_config:
            continue
        if b_config is None or a_config is None:
            kind = "added" if b_config is None else "removed"
            changes.append(Change(kind, f"pool {pool}", _options(b_config) if b_config else "",
                                  _options(a_config) if a_config else ""))
            continue
        # Only the options that differ, so a changed pool reads as what changed.
        before, after = vars(b_config), vars(a_config)
        differ = [k for k in before if before[k] != after[k]]
        changes.append(Change("changed", f"pool {pool}", ", ".join(f"{k}={before[k]}" for k in differ),
                              ", ".join(f"{k}={after[k]}" for k in differ)))
    for name in sorted(old.destinations.keys() | new.destinations.keys()):
        b_dest, a_dest = old.destinations.get(name), new.destinations.get(name)
        if b_dest != a_dest:
            kind = "added" if b_dest is None else "removed" if a_dest is None else "changed"
            changes.append(Change(kind, f"destination {name}",
                                  f"url_env={b_dest.url_env}, secret_env={b_dest.secret_env}" if b_dest else "",
                                  f"url_env={a_dest.url_env}, secret_env={a_dest.secret_env}" if a_dest else ""))
    return changes


def diff_pasted(loaded: RoutingTable, pasted: str,
                max_bytes: int = defaults.MAX_ROUTING_FILE_BYTES) -> PastedDiff:
    """What loading `pasted` instead of the table in use would change; its errors if it is invalid.

    A paste larger than a routing file may be (MAX_ROUTING_FILE_BYTES) is refused unparsed.
    """
    if len(pasted.encode()) > max_bytes:
        return PastedDiff([], error=f"the pasted file is over {max_bytes // 1024} KiB, "
                                    "the largest routing file a process reads")
    try:
        new = parse_routing(pasted, source="pasted")
    except ConfigError as err:
        return PastedDiff([], error=str(err))
    return PastedDiff(table_diff(loaded, new), version=new.version, warnings=new.warnings, table=new)
