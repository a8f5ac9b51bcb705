"""The ``erathos-prefect-bridge`` command: ``serve`` and the operators' tools beside it
(``check``, ``simulate``, ``events``, ``replay``, ``erathos-template``, ``automation``).
One module per command; :mod:`app.cli.command` parses the arguments and dispatches."""

from app.cli.command import main
from app.cli.template import erathos_template, webhook_body_template

__all__ = ["erathos_template", "main", "webhook_body_template"]
