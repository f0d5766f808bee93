"""The two baselines the ingress is measured against, each served by uvicorn like the ingress.

naive: the handler Stripe's docs show (`construct_event`, then work in the request), here
       with one XADD as the only work. raw: read the body and answer 200, the floor.
"""

from __future__ import annotations

import os

import redis.asyncio as aioredis
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send


def naive_app() -> Starlette:
    secret = os.environ["STRIPE_WEBHOOK_SECRET"]
    client = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    stream = os.environ.get("FANOUT_PREFIX", "bench") + ":naive"

    async def webhook(request: Request) -> Response:
        payload = await request.body()
        try:
            event = stripe.Webhook.construct_event(payload, request.headers.get("stripe-signature"), secret)
        except (ValueError, stripe.SignatureVerificationError):
            return JSONResponse({"error": "bad request"}, status_code=400)
        await client.xadd(stream, {"id": event["id"], "type": event["type"], "body": payload})
        return JSONResponse({"received": True})

    return Starlette(routes=[Route("/webhooks/stripe", webhook, methods=["POST"])])


async def _raw(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def raw_app() -> object:
    return _raw
