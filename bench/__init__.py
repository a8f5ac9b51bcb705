"""How close the service comes to the limit of its stack, and how fast a backlog drains
into a real Prefect: ``python3 tools/dev.py bench`` (see bench/README.md)."""
