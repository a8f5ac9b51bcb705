"""erathos-prefect-bridge: Erathos job-completion webhooks in, Prefect flow runs out.

One event's path, one package per stage, in the order it travels:

- ``server``: the HTTP connection (deadlines, limits, body, tokens);
- ``intake``: the webhook (or the drop-in) takes it, authenticates and acknowledges it;
- ``routing``: the Erathos event, its rules and templates, the Prefect request it becomes;
- ``storage``: kept durably with its deliveries, in one transaction;
- ``delivery``: sent to Prefect by the dispatcher, retried, dead-lettered, recorded.

Beside the path: ``console`` (the operator UI), ``config`` (settings), ``cli`` (the
command); at the top, ``main`` (the app), ``service`` (its resources), and what every
stage shares (``errors``, ``logs``, ``masking``, ``metrics``, ``ids``, ``times``).
pyproject's ``[tool.importlinter]`` says which package may import which.
"""

__version__ = "0.1.0"
