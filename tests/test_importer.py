"""Handler names resolve once; each error says exactly what is missing."""

from __future__ import annotations

import pytest

from bus.errors import ConfigError
from bus.routing import Destination
from workers.importer import resolve_handler

DESTS = {"backend": Destination("backend", "BACKEND_URL", "BACKEND_SECRET")}


def test_builtin_short_name_and_import_path_resolve_to_callables() -> None:
    from tests import handlers_for_tests
    from workers.builtin import noop

    assert resolve_handler("noop", DESTS) is noop
    assert resolve_handler("tests.handlers_for_tests:record", DESTS) is handlers_for_tests.record


def test_forward_resolves_bound_to_its_destination() -> None:
    handler = resolve_handler("forward:backend", DESTS)
    assert handler.args == ("backend", DESTS)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "message"), [
    ("tests.no_such_module:f", "no module named 'tests.no_such_module'"),
    ("tests.handlers_for_tests:nope", "module 'tests.handlers_for_tests' has no attribute 'nope'"),
    ("forward:elsewhere", "unknown destination 'elsewhere' (destinations: backend)"),
    ("orders.nonexistent", "unknown handler 'orders.nonexistent'"),
    ("tests.handlers_for_tests:H_PREFIX_NOT_CALLABLE", "has no attribute"),
])
def test_unresolvable_names_say_what_is_missing(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_handler(name, DESTS)
    assert message in str(info.value)
