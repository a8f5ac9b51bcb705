"""``python -m app.cli``: the command, as the console script runs it."""

import sys

from app.cli.command import main

sys.exit(main())
