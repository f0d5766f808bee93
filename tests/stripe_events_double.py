"""A test double of Stripe's `GET /v1/events`, for what localstripe lacks: `types[]` and 429s.

It is ours, not Stripe's: it serves events given to it, newest first as Stripe
does, filtered by `created[gte]`, `created[lte]` and `types[]`, paged by `limit`
and `starting_after`, with `has_more`. It answers 401 to any key but its own, and
429 with `Retry-After` to the first `throttle` requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

API_KEY = "sk_test_double_fanout"


@dataclass
class EventsDouble:
    events: list[dict[str, Any]] = field(default_factory=list)
    throttle: int = 0
    retry_after_s: str = "1"
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/events", self.list_events)])

    async def list_events(self, request: Request) -> JSONResponse:
        query = request.query_params
        self.requests.append({k: query.getlist(k) for k in query})
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"error": {"type": "invalid_request_error",
                                           "message": "Invalid API Key provided: sk_test_****"}}, 401)
        if self.throttle > 0:
            self.throttle -= 1
            return JSONResponse({"error": {"type": "rate_limit_error"}}, 429,
                                headers={"Retry-After": self.retry_after_s})
        selected = sorted(self.events, key=lambda e: e["created"], reverse=True)
        if "created[gte]" in query:
            selected = [e for e in selected if e["created"] >= int(query["created[gte]"])]
        if "created[lte]" in query:
            selected = [e for e in selected if e["created"] <= int(query["created[lte]"])]
        if query.getlist("types[]"):
            selected = [e for e in selected if e["type"] in query.getlist("types[]")]
        if "starting_after" in query:
            ids = [e["id"] for e in selected]
            selected = selected[ids.index(query["starting_after"]) + 1:]
        limit = int(query.get("limit", "10"))
        return JSONResponse({"object": "list", "url": "/v1/events", "data": selected[:limit],
                             "has_more": len(selected) > limit})
