"""erathos-prefect-bridge: Erathos job-completion webhooks in, Prefect flow runs out.

One event travels through the modules in this order: ``api`` (received,
authenticated), ``event`` (parsed), ``routes`` (routed), ``store`` (stored),
``dispatcher`` and ``prefect`` (delivered, recorded).
"""

__version__ = "0.1.0"
