"""The benchmark of issue 7 (and issue 9's drain): ``python3 tools/dev.py bench``."""
