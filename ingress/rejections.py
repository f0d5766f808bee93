"""Why a delivery was refused: an HTTP status, a stable error code, and a detail for humans."""

from __future__ import annotations

from bus.errors import FanoutError


class Rejected(FanoutError):
    """The delivery is refused and nothing was published."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


def bad_request(code: str, detail: str) -> Rejected:
    return Rejected(400, code, detail)
