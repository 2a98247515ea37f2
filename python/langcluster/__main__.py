"""``python -m langcluster demo`` and ``python -m langcluster bench``."""

from __future__ import annotations

import sys

from langcluster.cli import main

if __name__ == "__main__":
    sys.exit(main())
