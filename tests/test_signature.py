"""Stripe-Signature verification: every way a header can be right or wrong."""

from __future__ import annotations

import time

import pytest
import stripe

from bus.settings import parse_secrets
from bus.signing import stripe_signature
from ingress.rejections import Rejected
from ingress.signature import verify

SECRET = "whsec_current"
OLD_SECRET = "whsec_previous"
BODY = b'{"id": "evt_1", "type": "charge.refunded", "data": {"object": {"id": "ch_1"}}}'
TOLERANCE_S = 300


def sig(body: bytes = BODY, secret: str = SECRET, ts: int | None = None) -> str:
    return stripe_signature(body, secret, timestamp=ts)


def v1_of(header: str) -> str:
    return header.split("v1=")[1]


def rejection(body: bytes, header: str | None, secrets: str = SECRET) -> Rejected:
    with pytest.raises(Rejected) as caught:
        verify(body, header, parse_secrets(secrets), TOLERANCE_S)
    return caught.value


def test_a_header_signed_with_the_configured_secret_passes() -> None:
    verify(BODY, sig(), parse_secrets(SECRET), TOLERANCE_S)


def test_our_signature_is_accepted_by_the_stripe_sdk_itself() -> None:
    stripe.WebhookSignature.verify_header(BODY.decode(), sig(), SECRET, TOLERANCE_S)


def test_two_v1_entries_pass_when_one_matches() -> None:
    ts = int(time.time())
    good = v1_of(sig(ts=ts))
    header = f"t={ts},v1={'0' * 64},v1={good}"
    verify(BODY, header, parse_secrets(SECRET), TOLERANCE_S)


def test_rotation_accepts_the_old_and_the_new_secret() -> None:
    both = f"{SECRET},{OLD_SECRET}"
    verify(BODY, sig(secret=OLD_SECRET), parse_secrets(both), TOLERANCE_S)
    verify(BODY, sig(secret=SECRET), parse_secrets(both), TOLERANCE_S)


def test_a_header_with_only_a_v0_entry_is_a_bad_signature() -> None:
    ts = int(time.time())
    header = f"t={ts},v0={v1_of(sig(ts=ts))}"
    assert rejection(BODY, header).code == "bad_signature"


def test_spaces_after_the_commas_are_tolerated() -> None:
    ts = int(time.time())
    header = f"t={ts}, v1={'f' * 64}, v1={v1_of(sig(ts=ts))}"
    verify(BODY, header, parse_secrets(SECRET), TOLERANCE_S)


def test_an_expired_timestamp_is_out_of_tolerance() -> None:
    old = int(time.time()) - TOLERANCE_S - 60
    found = rejection(BODY, sig(ts=old))
    assert (found.status, found.code) == (400, "timestamp_out_of_tolerance")


def test_an_expired_timestamp_under_the_wrong_secret_is_a_bad_signature_not_a_timing_hint() -> None:
    old = int(time.time()) - TOLERANCE_S - 60
    assert rejection(BODY, sig(secret="whsec_other", ts=old)).code == "bad_signature"


def test_a_missing_header_is_missing_signature() -> None:
    assert rejection(BODY, None).code == "missing_signature"


@pytest.mark.parametrize("header", ["", "   ", ","])
def test_an_empty_header_is_malformed(header: str) -> None:
    assert rejection(BODY, header).code == "malformed_signature"


@pytest.mark.parametrize("header", ["garbage", "v1=abc", "t=notanumber,v1=abc", "t=1,v1"])
def test_an_unreadable_header_is_malformed(header: str) -> None:
    assert rejection(BODY, header).code == "malformed_signature"


def test_the_wrong_secret_is_a_bad_signature() -> None:
    found = rejection(BODY, sig(secret="whsec_someone_else"))
    assert (found.status, found.code) == (400, "bad_signature")


def test_a_body_altered_by_one_byte_is_a_bad_signature() -> None:
    header = sig()
    altered = BODY.replace(b"ch_1", b"ch_2")
    assert len(altered) == len(BODY) and altered != BODY
    assert rejection(altered, header).code == "bad_signature"


def test_a_body_that_is_not_utf8_is_a_bad_signature() -> None:
    assert rejection(b"\xff\xfe{}", sig()).code == "bad_signature"


def test_no_configured_secret_answers_503_so_stripe_retries_until_it_is_fixed() -> None:
    found = rejection(BODY, sig(), secrets="")
    assert found.status == 503


def test_the_detail_never_contains_the_secret() -> None:
    for found in (rejection(BODY, sig(secret="whsec_x")), rejection(BODY, "t=1")):
        assert SECRET not in found.detail and SECRET not in str(found)
