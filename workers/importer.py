"""Resolve handler names from routing.yaml into callables, once, with errors that say what is missing.

A name is a built-in short name (bus.handler_names.BUILTIN_HANDLERS), a
``package.module:function`` path, or ``forward:<destination>``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any

from bus.errors import ConfigError
from bus.handler_names import IMPORT_PATH, classify_handler
from bus.routing import Destination, RoutingTable
from workers.context import Handler


def import_from_string(path: str) -> Any:
    """The object `module:attr` names; ConfigError says which part is missing."""
    module_name, _, attrs = path.partition(":")
    if not module_name or not attrs or not IMPORT_PATH.match(path):
        raise ConfigError(f"{path!r} must be in the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ConfigError(f"could not import module {module_name!r}: no module named {err.name!r}") from err
        raise ConfigError(f"module {module_name!r} failed to import: {err}") from err
    except Exception as err:  # the module exists but fails while importing
        raise ConfigError(f"module {module_name!r} failed to import: {type(err).__name__}: {err}") from err
    obj: Any = module
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attrs!r}") from None
    if not callable(obj):
        raise ConfigError(f"{path!r} is not callable")
    return obj


def resolve_handler(name: str, destinations: Mapping[str, Destination]) -> Handler:
    """The callable a handler name stands for; raise ConfigError naming what is missing.

    The name is classified as routing validation does (bus.handler_names.classify_handler).
    A forward handler looks its destination up in `destinations` at each call, so a
    mapping kept current (as the pool's HandlerSet does) makes routing.yaml edits apply.
    """
    found = classify_handler(name, destinations)
    if isinstance(found, str):
        raise ConfigError(found)
    if found.kind == "forward":
        from workers.forward.handler import forward_to

        handler: Handler = functools.partial(forward_to, found.target, destinations)
        return handler
    try:
        resolved: Handler = import_from_string(found.target)
    except ConfigError as err:
        where = f" (built-in {name!r} -> {found.target!r})" if found.target != name else ""
        raise ConfigError(f"handler {name!r}{where}: {err}") from err
    return resolved


def unresolved(table: RoutingTable, pool: str | None = None) -> list[str]:
    """Why each handler name of `table` (of `pool` only, if given) cannot be resolved, one
    message per (route, pool, name), as "file:line: route ..., pool ...: <import error>".

    `fanout routes check` reports these (the ingress never imports handler code), and a
    worker's hot reload refuses a table that has any for its pool, keeping the last good one.
    """
    problems: list[str] = []
    failed: dict[str, ConfigError | None] = {}
    for route in table.routes:
        for target, names in route.targets:
            if pool is not None and target != pool:
                continue
            for name in names:
                if name not in failed:
                    try:
                        resolve_handler(name, table.destinations)
                        failed[name] = None
                    except ConfigError as import_error:
                        failed[name] = import_error
                problem = failed[name]
                if problem is not None:
                    problems.append(f"{table.source}:{route.line}: route {route.pattern!r}, "
                                    f"pool {target!r}: {problem}")
    return problems
