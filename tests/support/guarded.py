"""The guarded Prefect server (the ``guarded_prefect`` fixture): Basic auth on, its API
under a Prefect Cloud-shaped path."""

from __future__ import annotations

ACCOUNT = "0f6a9b9e-3a8c-4c43-9a57-1d0c5c0b6a11"
WORKSPACE = "7c2d4e1f-5b6a-4f8e-8d9c-2a1b3c4d5e6f"
AUTH_STRING = "admin:correct-horse-battery"
BASE_PATH = f"/api/accounts/{ACCOUNT}/workspaces/{WORKSPACE}"
