"""Property: whatever bodies, headers and signatures arrive, the answer is a 4xx and nothing is stored.

Three families of input: random bytes with random headers, random bodies signed
with the right secret (so they get past verification into parsing), and real
events with one field broken, signed correctly.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.keys import Keys
from bus.signing import stripe_signature
from fanout.samples import sample_event

from .conftest import TEST_SECRET, make_settings
from .ingress_client import WEBHOOK, running

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120)


def _broken_event(draw: st.DrawFn) -> bytes:
    event: dict[str, Any] = sample_event("checkout.session.completed")
    field = draw(st.sampled_from(["id", "type", "data", "object"]))
    replacement = draw(json_values)
    if field == "object":
        event["data"]["object"] = replacement if not isinstance(replacement, dict) else [replacement]
    elif field == "id":
        event["id"] = replacement if not (isinstance(replacement, str) and replacement.startswith("evt_")) else 1
    elif field == "type":
        event["type"] = replacement if not isinstance(replacement, str) or not replacement else None
    else:
        event["data"] = replacement if not isinstance(replacement, dict) else {"object": None}
    return json.dumps(event).encode()


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    family = draw(st.sampled_from(["random", "signed_random", "signed_broken_event"]))
    if family == "random":
        body = draw(st.binary(max_size=300))
        headers = {}
        if draw(st.booleans()):
            headers["Stripe-Signature"] = draw(
                header_text | st.builds(lambda t, s: f"t={t},v1={s}", st.integers(), header_text)
            )
        return body, headers
    if family == "signed_random":
        body = draw(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            body = body.decode("utf-8", "replace").encode()
    else:
        body = _broken_event(draw)
    return body, {"Stripe-Signature": stripe_signature(body, TEST_SECRET, timestamp=int(time.time()))}


@pytest.mark.integration
def test_random_input_always_gets_a_4xx_and_stores_nothing(prefix: str) -> None:
    app_settings = make_settings(prefix)
    statuses: list[int] = []
    codes: set[str] = set()

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(deliveries())
    def check(delivery: tuple[bytes, dict[str, str]]) -> None:
        body, headers = delivery

        async def post() -> httpx.Response:
            async with running(app_settings, watch_routing=False) as (_, client):
                return await client.post(WEBHOOK, content=body, headers=headers)

        response = asyncio.run(post())
        statuses.append(response.status_code)
        assert 400 <= response.status_code < 500, (response.status_code, response.text)
        assert set(response.json()) == {"error", "detail"}
        codes.add(response.json()["error"])

    check()
    client = redis.Redis.from_url(app_settings.redis_url)
    try:
        assert list(client.scan_iter(match=Keys(prefix).stream("*"))) == []
        assert list(client.scan_iter(match=Keys(prefix).seen("*", "*"))) == []
    finally:
        client.close()
    assert len(statuses) >= 100
    # Every family reached its stage: signature checks, JSON parsing and shape checks.
    assert {"bad_signature", "invalid_json", "not_a_stripe_event"} <= codes, codes
