"""The event types the installed Stripe SDK knows, read from its source files.

Routing validation warns about event types no Stripe SDK knows (typos), so every
load of routing.yaml needs this set. Importing `stripe` to get it costs 0.1 to 0.4 s
(the SDK pulls in its HTTP clients), which every worker start, `fanout status` and
each reload paid for a set of names. The names are literals in two files of the
SDK, so they are read from the text instead, in about a millisecond:

* `stripe/_event.py`: the `type: Literal[...]` annotation of `Event` (snapshot types);
* `stripe/events/_event_classes.py`: the keys of `_V2_EVENT_NOTIFICATION_CLASS_LOOKUP`,
  the table `StripeClient.parse_event_notification` dispatches on (thin types).

If a future SDK lays those files out differently and the scan finds nothing, the
set comes from importing the SDK, as before (tests/test_stripe_types.py checks
that both ways agree on the installed SDK).
"""

from __future__ import annotations

import importlib.util
import re
import typing
from functools import cache
from pathlib import Path

# Where each list starts and ends in its file (found with str.find: a regex spanning the
# 1,300-line lookup table took 15 ms, as long as the rest of loading routing.yaml).
_SNAPSHOT_BLOCK = ("\n    type: Literal[\n", "\n    ]")
_THIN_BLOCK = ("\n_V2_EVENT_NOTIFICATION_CLASS_LOOKUP = {\n", "\n}")
_QUOTED_LINE = re.compile(r'^\s+"([^"]+)",$', re.M)
_THIN_KEY = re.compile(r'^    "([^"]+)": \(', re.M)


def _sdk_dir() -> Path | None:
    spec = importlib.util.find_spec("stripe")  # finds the package without running it
    locations = spec.submodule_search_locations if spec is not None else None
    return Path(next(iter(locations))) if locations else None


def _scan(relative: str, block: tuple[str, str], item: re.Pattern[str]) -> frozenset[str]:
    sdk = _sdk_dir()
    try:
        text = (sdk / relative).read_text(encoding="utf-8") if sdk is not None else ""
    except OSError:
        return frozenset()
    opening, closing = block
    start = text.find(opening)
    end = text.find(closing, start + len(opening)) if start >= 0 else -1
    return frozenset(item.findall(text, start + len(opening), end)) if end >= 0 else frozenset()


@cache
def snapshot_event_types() -> frozenset[str]:
    """The snapshot (v1 `Event`) types: customer.created, invoice.paid, ..."""
    scanned = _scan("_event.py", _SNAPSHOT_BLOCK, _QUOTED_LINE)
    return scanned or imported_snapshot_event_types()


@cache
def thin_event_types() -> frozenset[str]:
    """The thin event notification types (v1.customer.created, v2.core.*, ...)."""
    scanned = _scan("events/_event_classes.py", _THIN_BLOCK, _THIN_KEY)
    return scanned or imported_thin_event_types()


@cache
def known_event_types() -> frozenset[str]:
    """Every event type the installed Stripe SDK knows: snapshot types and thin ones."""
    return snapshot_event_types() | thin_event_types()


def imported_snapshot_event_types() -> frozenset[str]:
    import stripe

    return frozenset(typing.get_args(stripe.Event.__annotations__["type"]))


def imported_thin_event_types() -> frozenset[str]:
    from stripe.events import _event_classes

    lookup: dict[str, object] = getattr(_event_classes, "_V2_EVENT_NOTIFICATION_CLASS_LOOKUP", {})
    return frozenset(lookup)
