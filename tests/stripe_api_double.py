"""A test double for the Stripe API: the few GET endpoints a thin event handler fetches.

Not Stripe: a small Starlette app served over a real socket (tests.postgrest_double.serve)
that answers GET for the objects a test puts in `objects` (keyed by path),
404 with Stripe's error body otherwise, 401 for a wrong key, and a 429 with
Retry-After for the next `rate_limited[path]` requests to a path. It records
every request (path, headers, monotonic time) so tests can assert on them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    at_s: float


@dataclass
class StripeApiDouble:
    api_key: str = "sk_test_double"
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=dict)
    retry_after_s: str = "0"
    requests: list[Seen] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._get, methods=["GET"])])

    async def _get(self, request: Request) -> JSONResponse:
        path = request.url.path
        self.requests.append(Seen(path, dict(request.headers), time.monotonic()))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": {"type": "invalid_request_error",
                                           "message": "Invalid API Key provided: sk_****"}}, 401)
        if self.rate_limited.get(path, 0) > 0:
            self.rate_limited[path] -= 1
            return JSONResponse({"error": {"type": "rate_limit_error", "code": "rate_limit"}}, 429,
                                headers={"Retry-After": self.retry_after_s})
        found = self.objects.get(path)
        if found is None:
            return JSONResponse({"error": {"type": "invalid_request_error", "code": "resource_missing",
                                           "message": f"No such object: {path.rsplit('/', 1)[-1]}"}},
                                404)
        return JSONResponse(found)
