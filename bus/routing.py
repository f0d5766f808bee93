"""routing.yaml: load and validate once into the frozen table of bus/routing_table.py.

Validation names the file, the line and the problem, and reports every problem
at once. Code that runs the table trusts it. The table's names are re-exported
here, so callers import everything routing-related from this module.
"""

from __future__ import annotations

import collections
import difflib
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml

from bus import defaults
from bus.errors import ConfigError
from bus.handler_names import (
    ANY_TYPE,
    BUILTIN_ACCEPTS,
    DESTINATION_NAME,
    handler_accepts,
    handler_name_problem,
)
from bus.routing_file import compose_yaml, read_routing_text
from bus.routing_table import (
    Destination,
    MatchKind,
    PoolConfig,
    Route,
    RouteMatch,
    RoutingTable,
)
from bus.stripe_types import known_event_types, thin_event_types

__all__ = [
    "Destination",
    "MatchKind",
    "PoolConfig",
    "Route",
    "RouteMatch",
    "RoutingTable",
    "known_event_types",
    "load_routing",
    "parse_routing",
    "thin_event_types",
]

POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# Dot-separated lowercase segments; a segment may name a sub-resource in brackets, as thin
# v2 types do: v2.core.account[configuration.customer].capability_status_updated.
_SEGMENT = r"[a-z0-9_]+(\[[a-z0-9_]+(\.[a-z0-9_]+)*\])?"
EVENT_NAME = re.compile(rf"^{_SEGMENT}(\.{_SEGMENT})*$")
EXECUTORS = ("async", "rq")
# What _scalar returns for a value it reported as a problem.
_INVALID = object()
ORDERINGS = ("none", "object")

# --- loading -------------------------------------------------------------------------------------


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, node: yaml.Node | None, message: str) -> None:
        self.errors.append(f"{self.source}:{_line(node)}: {message}")

    def warn(self, node: yaml.Node | None, message: str) -> None:
        self.warnings.append(f"{self.source}:{_line(node)}: {message}")


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def load_routing(path: str | Path, max_bytes: int = defaults.MAX_ROUTING_FILE_BYTES) -> RoutingTable:
    """Read and validate a routing file; raise ConfigError listing every problem found."""
    return parse_routing(read_routing_text(Path(path), max_bytes), source=str(path))


def parse_routing(text: str, source: str = "routing.yaml") -> RoutingTable:
    problems = _Problems(source)
    root = compose_yaml(text, source)
    if root is None:
        raise ConfigError(f"{source}:1: the file is empty; it needs 'pools' and 'routes'")
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{source}:{_line(root)}: the top level must be a mapping")

    _check_tags(root, problems)
    sections = _mapping(root, problems, "top level")
    for name, (key_node, _) in sections.items():
        if name not in ("pools", "destinations", "routes", "version"):
            problems.error(key_node, f"unknown section {name!r} (expected pools, destinations, routes)")

    pools = _load_pools(sections.get("pools"), problems, root)
    destinations = _load_destinations(sections.get("destinations"), problems)
    routes = _load_routes(sections.get("routes"), problems, root, pools, destinations)
    _check_handler_types(routes, problems)

    if problems.errors:
        raise ConfigError("\n".join(problems.errors))

    canonical = {
        "pools": {n: vars(p) for n, p in sorted(pools.items())},
        "destinations": {n: vars(d) for n, d in sorted(destinations.items())},
        "routes": {r.pattern: [[p, list(h)] for p, h in r.targets] for r in routes},
    }
    version = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    return _table(routes, pools=pools, destinations=destinations, version=version, source=source,
                  warnings=tuple(problems.warnings))


def _table(routes: list[Route], **fields: Any) -> RoutingTable:
    """A RoutingTable over `routes`, with its match indexes built."""
    exact = {r.pattern: r for r in routes if r.kind == "exact"}
    wildcards = sorted(
        ((r.pattern[:-1], r) for r in routes if r.kind == "wildcard"),
        key=lambda pair: len(pair[0]),
        reverse=True,
    )
    catch_all = next((r for r in routes if r.kind == "catch-all"), None)
    return RoutingTable(
        routes=tuple(routes),
        _exact=exact,
        _wildcards=tuple(wildcards),
        _catch_all=catch_all,
        **fields,
    )


# How many of the types a route would wrongly send a handler an error message names.
_TYPES_SHOWN = 4


def _check_handler_types(routes: list[Route], problems: _Problems) -> None:
    """Refuse a route that sends a built-in handler an event type it cannot handle.

    A wildcard (or '*') is judged by the known types it actually wins, so
    `customer.*` with profiles.upsert is refused (it would get customer.discount.*,
    customer.subscription.*, ...) unless more specific routes take those.
    """
    restricted = [(route, pool, name) for route in routes for pool, names in route.targets
                  for name in names if name in BUILTIN_ACCEPTS and ANY_TYPE not in BUILTIN_ACCEPTS[name]]
    if not restricted:
        return
    table = _table(routes, pools={}, destinations={}, version="", source=problems.source)
    won: dict[str, list[str]] = {}
    if any(route.kind != "exact" for route, _, _ in restricted):
        for event_type in sorted(known_event_types()):
            hit = table.match(event_type).route
            if hit is not None and hit.kind != "exact":
                won.setdefault(hit.pattern, []).append(event_type)
    for route, pool, name in restricted:
        accepted = sorted(BUILTIN_ACCEPTS[name])
        takes = f"{name} takes only {', '.join(accepted)}"
        where = f"{problems.source}:{route.line}: route {route.pattern!r}, pool {pool!r}"
        if route.kind == "exact":
            if route.pattern not in BUILTIN_ACCEPTS[name]:
                thin = (" (a thin event carries a reference, not the object; route the snapshot "
                        "type instead)" if route.pattern in thin_event_types() else "")
                problems.errors.append(f"{where}: {takes}; it cannot handle {route.pattern!r}{thin}")
            continue
        wrong = [t for t in won.get(route.pattern, []) if not handler_accepts(name, t)]
        if wrong:
            shown = ", ".join(wrong[:_TYPES_SHOWN])
            more = f" and {len(wrong) - _TYPES_SHOWN} more" if len(wrong) > _TYPES_SHOWN else ""
            instead = "; ".join(f"{t}: {{{pool}: [{name}]}}" for t in accepted)
            others = sum(len(names) for _, names in route.targets) > 1
            keep = f", and keep {route.pattern!r} for its other handlers" if others else ""
            problems.errors.append(
                f"{where}: {takes}, but this route also sends it {shown}{more}. Route the "
                f"types it takes by name instead ({instead}){keep}"
            )


def _mapping(
    node: yaml.MappingNode, problems: _Problems, what: str
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """Keys of a YAML mapping with their nodes; duplicate and non-string keys are errors."""
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or not key_node.value:
            problems.error(key_node, f"{what}: keys must be non-empty strings")
            continue
        key = str(key_node.value)
        if key in out:
            first = _line(out[key][0])
            problems.error(key_node, f"{what}: duplicate key {key!r} (first defined on line {first})")
            continue
        out[key] = (key_node, value_node)
    return out


# Only the tags of plain data; `!!python/object` and other application tags are refused.
PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in
                       ("str", "int", "float", "bool", "null", "map", "seq", "timestamp"))


def _check_tags(root: yaml.Node, problems: _Problems) -> None:
    """Report every node tagged with anything but plain data (iteratively: nesting may be deep)."""
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        if node.tag not in PLAIN_TAGS:
            problems.error(node, f"unsupported YAML tag {node.tag!r}: only plain data is allowed")
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _scalar(node: yaml.Node, problems: _Problems, what: str) -> Any:
    """The Python value of a scalar node, with YAML's usual typing (ints, floats, bools).

    A value its tag cannot make (`!!int eight`) is a problem on its line, not an exception.
    """
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except Exception as err:  # ValueError, ConstructorError, ...: whatever a constructor raises
        reason = getattr(err, "problem", None) or err
        problems.error(node, f"{what}: cannot read {node.value!r} as {node.tag.rsplit(':', 1)[-1]}: {reason}")
        return _INVALID


def _load_pools(
    entry: tuple[yaml.Node, yaml.Node] | None, problems: _Problems, root: yaml.Node
) -> dict[str, PoolConfig]:
    if entry is None:
        problems.error(root, "missing 'pools' section: declare at least one pool")
        return {}
    key_node, node = entry
    if not isinstance(node, yaml.MappingNode) or not node.value:
        problems.error(key_node, "'pools' must be a mapping of pool names to options")
        return {}
    pools: dict[str, PoolConfig] = {}
    for name, (name_node, options_node) in _mapping(node, problems, "pools").items():
        if not POOL_NAME.match(name):
            problems.error(name_node, f"pool name {name!r} must be lowercase letters, digits, '_' or '-'")
            continue
        options = _options(options_node, problems, f"pool {name!r}", name_node)
        pool = PoolConfig(name=name)
        values: dict[str, Any] = {}
        for option, (opt_node, value) in options.items():
            if option not in PoolConfig.__dataclass_fields__ or option == "name":
                allowed = ", ".join(f for f in PoolConfig.__dataclass_fields__ if f != "name")
                problems.error(opt_node, f"pool {name!r}: unknown option {option!r} (allowed: {allowed})")
                continue
            problem = _pool_option_problem(option, value)
            if problem:
                problems.error(opt_node, f"pool {name!r}: {option} {problem}")
                continue
            values[option] = value
        pools[name] = PoolConfig(**{**vars(pool), **values})
        if pools[name].ordering == "object" and pools[name].executor == "rq":
            problems.error(options["ordering"][0], f"pool {name!r}: ordering: object needs executor: async "
                           "(an RQ pool cannot keep one run per object at a time)")
    return pools


def _pool_option_problem(option: str, value: Any) -> str | None:
    if option == "executor":
        return None if value in EXECUTORS else f"must be one of {', '.join(EXECUTORS)}, got {value!r}"
    if option == "ordering":
        return None if value in ORDERINGS else f"must be one of {', '.join(ORDERINGS)}, got {value!r}"
    if option == "skip_stale":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {value!r}"
    if option in ("concurrency", "max_attempts", "retention_s") and not isinstance(value, int):
        return f"must be a whole number, got {value!r}"
    if value <= 0:
        return f"must be positive, got {value!r}"
    return None


def _options(
    node: yaml.Node, problems: _Problems, what: str, owner: yaml.Node
) -> dict[str, tuple[yaml.Node, Any]]:
    if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
        return {}
    if not isinstance(node, yaml.MappingNode):
        problems.error(owner, f"{what}: options must be a mapping")
        return {}
    out: dict[str, tuple[yaml.Node, Any]] = {}
    for key, (key_node, value_node) in _mapping(node, problems, what).items():
        if not isinstance(value_node, yaml.ScalarNode):
            problems.error(value_node, f"{what}: {key} must be a single value")
            continue
        value = _scalar(value_node, problems, f"{what}: {key}")
        if value is not _INVALID:
            out[key] = (key_node, value)
    return out


# A destination's numeric options and their type (forward: limits, breaker; bus/routing_table.py).
DESTINATION_NUMBERS: dict[str, type] = {
    "timeout_s": float, "concurrency": int, "rate_per_s": float,
    "breaker_failures": int, "breaker_window_s": float, "breaker_open_s": float,
}


def _load_destinations(
    entry: tuple[yaml.Node, yaml.Node] | None, problems: _Problems
) -> dict[str, Destination]:
    if entry is None:
        return {}
    key_node, node = entry
    if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
        return {}
    if not isinstance(node, yaml.MappingNode):
        problems.error(key_node, "'destinations' must be a mapping of names to {url_env, secret_env}")
        return {}
    out: dict[str, Destination] = {}
    for name, (name_node, options_node) in _mapping(node, problems, "destinations").items():
        if not DESTINATION_NAME.match(name):
            problems.error(name_node, f"destination name {name!r} must be letters, digits, '_' or '-'")
            continue
        options = _options(options_node, problems, f"destination {name!r}", name_node)
        values: dict[str, Any] = {}
        for option, (opt_node, value) in options.items():
            if option in ("url_env", "secret_env"):
                if not isinstance(value, str) or not re.match(r"^[A-Z_][A-Z0-9_]*$", value):
                    problems.error(opt_node, f"destination {name!r}: {option} must name an environment variable, got {value!r}")
                    continue
            elif option in DESTINATION_NUMBERS:
                whole = DESTINATION_NUMBERS[option] is int
                if (isinstance(value, bool) or not isinstance(value, int if whole else int | float)
                        or value <= 0):
                    problems.error(opt_node, f"destination {name!r}: {option} must be a positive "
                                             f"{'whole number' if whole else 'number'}")
                    continue
            else:
                allowed = ", ".join(("url_env", "secret_env", *DESTINATION_NUMBERS))
                problems.error(opt_node, f"destination {name!r}: unknown option {option!r} (allowed: {allowed})")
                continue
            values[option] = value
        missing = [o for o in ("url_env", "secret_env") if o not in options]
        if missing:
            problems.error(name_node, f"destination {name!r} is missing {' and '.join(missing)}")
            continue
        if len(values) == len(options):
            out[name] = Destination(name=name, **values)
    return out


def _route_kind(pattern: str) -> MatchKind | None:
    if pattern == "*":
        return "catch-all"
    if pattern.endswith(".*") and EVENT_NAME.match(pattern[:-2]):
        return "wildcard"
    if EVENT_NAME.match(pattern):
        return "exact"
    return None


def _load_routes(
    entry: tuple[yaml.Node, yaml.Node] | None,
    problems: _Problems,
    root: yaml.Node,
    pools: dict[str, PoolConfig],
    destinations: dict[str, Destination],
) -> list[Route]:
    if entry is None:
        problems.error(root, "missing 'routes' section")
        return []
    key_node, node = entry
    if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
        return []
    if not isinstance(node, yaml.MappingNode):
        problems.error(key_node, "'routes' must be a mapping of event types to {pool: [handlers]}")
        return []
    hints = _Hints(known_event_types())
    dest_names = frozenset(destinations)
    routes: list[Route] = []
    for pattern, (pattern_node, targets_node) in _mapping(node, problems, "routes").items():
        kind = _route_kind(pattern)
        if kind is None:
            problems.error(
                pattern_node,
                f"malformed route {pattern!r}: use an event type (charge.refunded), "
                "a prefix wildcard ending in '.*' (customer.*), or '*'",
            )
            continue
        _warn_unknown_type(pattern, kind, pattern_node, hints, problems)
        if not isinstance(targets_node, yaml.MappingNode) or not targets_node.value:
            problems.error(pattern_node, f"route {pattern!r} must map pool names to handler lists")
            continue
        targets: list[tuple[str, tuple[str, ...]]] = []
        for pool, (pool_node, handlers_node) in _mapping(targets_node, problems, f"route {pattern!r}").items():
            if pool not in pools:
                known_pools = ", ".join(sorted(pools)) or "none declared"
                problems.error(pool_node, f"route {pattern!r}: unknown pool {pool!r} (pools: {known_pools})")
                continue
            handlers = list(_handler_names(handlers_node, problems, pattern, pool))
            for handler_node, handler in handlers:
                problem = handler_name_problem(handler, dest_names)
                if problem:
                    problems.error(handler_node, f"route {pattern!r}, pool {pool!r}: {problem}")
            names = [h for _, h in handlers]
            for dup in sorted(h for h, n in collections.Counter(names).items() if n > 1):
                problems.error(handlers_node, f"route {pattern!r}, pool {pool!r}: handler {dup!r} is listed twice")
            targets.append((pool, tuple(names)))
        routes.append(Route(pattern, kind, tuple(targets), _line(pattern_node)))
    return routes


def _handler_names(
    node: yaml.Node, problems: _Problems, pattern: str, pool: str
) -> Iterator[tuple[yaml.Node, str]]:
    items = [node] if isinstance(node, yaml.ScalarNode) else node.value if isinstance(node, yaml.SequenceNode) else None
    if not items:
        problems.error(node, f"route {pattern!r}, pool {pool!r}: give a list of one or more handlers")
        return
    for item in items:
        if not isinstance(item, yaml.ScalarNode) or not item.value.strip():
            problems.error(item, f"route {pattern!r}, pool {pool!r}: a handler must be a non-empty string")
            continue
        yield item, item.value.strip()


class _Hints:
    """"Did you mean" hints, with a bounded cost.

    difflib over all ~600 known types costs 1-5 ms per unknown name, which every worker
    start and reload paid for names that are not typos at all (a pool's own event types).
    So a name is compared only with the types of its own first segment (`customer.` for
    `customer.subscripton.updated`; `v1.billing.` for a thin type), or, when that segment is itself unknown, with those of
    the closest known segment (`custmer.created`); a name whose segment is close to none
    gets no hint. Only the first MAX_EVENT_TYPE_HINTS names get one.
    """

    def __init__(self, known: frozenset[str]) -> None:
        self.known = known
        self.prefixes = frozenset(t.split(".")[0] + ".*" for t in known)
        self.left = defaults.MAX_EVENT_TYPE_HINTS
        self._by_segment: dict[str, list[str]] = {}
        for name in sorted(known):
            self._by_segment.setdefault(_segment(name), []).append(name)

    def closest(self, pattern: str, candidates: frozenset[str]) -> str:
        if self.left <= 0 or len(pattern) > MAX_HINTED_NAME_CHARS:
            return ""
        self.left -= 1
        pool = self._same_segment(pattern) if candidates is self.known else sorted(candidates)
        close = difflib.get_close_matches(pattern, pool, n=1, cutoff=0.6)
        return f"; did you mean {close[0]!r}?" if close else ""

    def _same_segment(self, pattern: str) -> list[str]:
        segment = _segment(pattern)
        if segment not in self._by_segment:
            near = difflib.get_close_matches(segment, list(self._by_segment), n=1, cutoff=0.6)
            segment = near[0] if near else ""
        return self._by_segment.get(segment, [])


def _segment(name: str) -> str:
    """The part of an event type its hint is looked up under: `customer`, or `v1.billing` for thin types."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("v1", "v2") else parts[0]


# Stripe's longest event type is about 60 characters.
MAX_HINTED_NAME_CHARS = 100


def _warn_unknown_type(
    pattern: str, kind: MatchKind, node: yaml.Node, hints: _Hints, problems: _Problems
) -> None:
    if kind == "catch-all":
        return
    if kind == "exact" and pattern not in hints.known:
        hint = hints.closest(pattern, hints.known)
        problems.warn(node, f"{pattern!r} is not a Stripe event type this SDK knows{hint}")
    elif kind == "wildcard" and not any(t.startswith(pattern[:-1]) for t in hints.known):
        hint = hints.closest(pattern, hints.prefixes)
        problems.warn(node, f"{pattern!r} matches no Stripe event type this SDK knows{hint}")
