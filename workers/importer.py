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
from bus.handler_names import BUILTIN_HANDLERS, FORWARD_PREFIX, IMPORT_PATH
from bus.routing import Destination
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

    A forward handler looks its destination up in `destinations` at each call, so a
    mapping kept current (as the pool's HandlerSet does) makes routing.yaml edits apply.
    """
    if name.startswith(FORWARD_PREFIX):
        dest_name = name[len(FORWARD_PREFIX):]
        destination = destinations.get(dest_name)
        if destination is None:
            known = ", ".join(sorted(destinations)) or "none are declared"
            raise ConfigError(f"handler {name!r}: unknown destination {dest_name!r} (destinations: {known})")
        from workers.forward.handler import forward_to

        handler: Handler = functools.partial(forward_to, dest_name, destinations)
        return handler
    target = BUILTIN_HANDLERS.get(name, name)
    if target == name and ":" not in name:
        raise ConfigError(
            f"unknown handler {name!r}: not a built-in ({', '.join(sorted(BUILTIN_HANDLERS))}), "
            "not 'forward:<destination>', not 'package.module:function'"
        )
    try:
        resolved: Handler = import_from_string(target)
    except ConfigError as err:
        where = f" (built-in {name!r} -> {target!r})" if target != name else ""
        raise ConfigError(f"handler {name!r}{where}: {err}") from err
    return resolved
