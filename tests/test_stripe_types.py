"""The event types read from the Stripe SDK's source are the ones its classes define."""

from __future__ import annotations

import subprocess
import sys

from bus import stripe_types


def test_the_scanned_types_are_the_ones_the_imported_sdk_defines() -> None:
    assert stripe_types.snapshot_event_types() == stripe_types.imported_snapshot_event_types()
    assert stripe_types.thin_event_types() == stripe_types.imported_thin_event_types()
    assert "customer.created" in stripe_types.known_event_types()
    assert "v1.billing.meter.error_report_triggered" in stripe_types.known_event_types()


def test_loading_routing_does_not_import_the_stripe_sdk() -> None:
    # A worker start and every `fanout status` load routing.yaml; importing stripe costs them 0.1-0.4 s.
    code = ("import sys; from bus.routing import load_routing; load_routing('routing.yaml'); "
            "print('stripe' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_layout_the_scan_does_not_recognise_falls_back_to_importing_the_sdk(monkeypatch, tmp_path) -> None:
    (tmp_path / "_event.py").write_text("class Event:\n    type: str\n")  # no Literal block; no events/ at all
    monkeypatch.setattr(stripe_types, "_sdk_dir", lambda: tmp_path)
    monkeypatch.setattr(stripe_types, "imported_snapshot_event_types", lambda: frozenset({"from.import"}))
    monkeypatch.setattr(stripe_types, "imported_thin_event_types", lambda: frozenset({"v1.from.import"}))
    cached = (stripe_types.snapshot_event_types, stripe_types.thin_event_types, stripe_types.known_event_types)
    for function in cached:
        function.cache_clear()
    try:
        assert stripe_types.known_event_types() == {"from.import", "v1.from.import"}
    finally:
        for function in cached:
            function.cache_clear()
