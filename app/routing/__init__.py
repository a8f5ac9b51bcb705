"""What an Erathos event becomes: the event as Erathos sends it, its rules, the
``${{...}}`` templates, the router (which targets, and the exact Prefect request for
each), the routes file, and the Prefect event an execution is emitted as."""

from app.routing.event import METADATA, ErathosEvent
from app.routing.router import (
    DEFAULT_CONNECTION,
    DeploymentTarget,
    FlowTarget,
    PrefectRequest,
    Route,
    Router,
    default_router,
)
from app.routing.routes_file import ConnectionSpec, Routing, load_routes_file, read_routes_file
from app.routing.templates import Lookup, TemplateError, template_lookup

__all__ = [
    "DEFAULT_CONNECTION",
    "METADATA",
    "ConnectionSpec",
    "DeploymentTarget",
    "ErathosEvent",
    "FlowTarget",
    "Lookup",
    "PrefectRequest",
    "Route",
    "Router",
    "Routing",
    "TemplateError",
    "default_router",
    "load_routes_file",
    "read_routes_file",
    "template_lookup",
]
