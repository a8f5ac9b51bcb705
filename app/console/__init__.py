"""The operator console at ``/ui/`` (only with ``BRIDGE_ADMIN_TOKEN``): the app and its
headers, who gets in (sign-in, session cookie, CSRF), the pages, what they show (views),
and the ``ui/`` templates and static files."""

from app.console.app import console_app

__all__ = ["console_app"]
