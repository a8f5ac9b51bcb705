"""Where requests come in: the Erathos webhook, the Prefect-shaped drop-in, the admin API
(the sets' windows too), health and metrics; who may call each (auth); and ingest, which
routes, stores and delivers an event and words the answer. Diagnostics (simulate, check)
answer what an event would become without storing it."""

from app.intake.admin import admin_router
from app.intake.diagnose import check_route, simulate
from app.intake.dropin import dropin_router
from app.intake.health import health_router
from app.intake.sets_api import sets_router
from app.intake.webhook import webhook_router

__all__ = [
    "admin_router",
    "check_route",
    "dropin_router",
    "health_router",
    "sets_router",
    "simulate",
    "webhook_router",
]
