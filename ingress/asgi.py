"""The factory uvicorn imports in each server process: `ingress.asgi:from_env`."""

from __future__ import annotations

from bus.logs import configure_logging
from bus.settings import Settings
from ingress.app import Ingress, create_app


def from_env() -> Ingress:
    settings = Settings.from_env()
    configure_logging(settings.log_level, cache=True)
    return create_app(settings, freeze_gc=True)
