"""The stand-in `fanout run` serves for a forward: destination whose URL is unset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from bus.routing import Destination, load_routing
from bus.signing import stripe_signature
from fanout import standin
from fanout.run import run_banner as _run_banner
from fanout.samples import sample_event

from .conftest import make_settings

ADMIN = Destination("admin_backend", url_env="ADMIN_BACKEND_URL", secret_env="ADMIN_BACKEND_SECRET")
OTHER = Destination("erp", url_env="ERP_URL", secret_env="ERP_SECRET")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[standin.StandInServer]:
    started = standin.start([ADMIN], {}, log_dir=tmp_path / "var")
    assert started is not None
    yield started
    started.stop()


def lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_a_delivery_signed_with_the_destination_secret_is_verified_answered_200_and_logged(
        server: standin.StandInServer, tmp_path: Path) -> None:
    env = server.environ()
    event = sample_event("charge.refunded")
    body = orjson.dumps(event, option=orjson.OPT_INDENT_2)
    signature = stripe_signature(body, env["ADMIN_BACKEND_SECRET"])
    response = httpx.post(env["ADMIN_BACKEND_URL"], content=body, headers={"Stripe-Signature": signature})
    assert response.status_code == 200
    log = tmp_path / "var" / "admin-backend.jsonl"
    assert server.stand_ins["admin_backend"].log_path == log
    assert lines(log) == [{"id": event["id"], "type": "charge.refunded", "verified": True}]


def test_a_delivery_with_a_wrong_signature_is_answered_400_and_logged_unverified(
        server: standin.StandInServer, tmp_path: Path) -> None:
    event = sample_event("refund.created")
    body = orjson.dumps(event)
    response = httpx.post(server.environ()["ADMIN_BACKEND_URL"], content=body,
                          headers={"Stripe-Signature": stripe_signature(body, "whsec_wrong")})
    assert response.status_code == 400
    assert lines(tmp_path / "var" / "admin-backend.jsonl") == [
        {"id": event["id"], "type": "refund.created", "verified": False,
         "error": "SignatureVerificationError"}]


def test_only_destinations_without_a_url_get_a_stand_in_and_a_set_secret_is_kept(tmp_path: Path) -> None:
    env = {"ADMIN_BACKEND_URL": "https://admin.internal/stripe", "ERP_SECRET": "whsec_erp_own"}
    assert standin.start([ADMIN], env, log_dir=tmp_path) is None
    started = standin.start([ADMIN, OTHER], env, log_dir=tmp_path)
    assert started is not None
    try:
        assert set(started.stand_ins) == {"erp"}
        assert started.environ() == {"ERP_URL": started.stand_ins["erp"].url, "ERP_SECRET": "whsec_erp_own"}
    finally:
        started.stop()


def test_a_generated_secret_is_fresh_per_run_and_never_in_a_repr(server: standin.StandInServer) -> None:
    secret = server.environ()["ADMIN_BACKEND_SECRET"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert secret not in repr(server) and secret not in repr(server.stand_ins)
    again = standin.start([ADMIN], {}, log_dir=server.stand_ins["admin_backend"].log_path.parent)
    assert again is not None
    try:
        assert again.environ()["ADMIN_BACKEND_SECRET"] != secret
    finally:
        again.stop()


def test_with_admin_backend_url_set_run_starts_no_stand_in_and_its_banner_names_only_the_variable(
        prefix: str, tmp_path: Path) -> None:
    settings = make_settings(prefix, ADMIN_BACKEND_URL="https://admin.internal/stripe?token=t0k3n",
                             ADMIN_BACKEND_SECRET="whsec_admin_own")
    table = load_routing(settings.routing_file)
    assert standin.start(table.destinations.values(), settings.env, log_dir=tmp_path) is None
    banner = _run_banner(settings, table, "http://127.0.0.1:8000/webhooks/stripe", "redis://127.0.0.1:6379/0",
                         None, using_dev_secret=False)
    assert "  admin_backend:        forward: posts to the URL in ADMIN_BACKEND_URL\n" in banner
    assert "STAND-IN" not in banner and "t0k3n" not in banner and "whsec_admin_own" not in banner
    assert not list(tmp_path.iterdir())
