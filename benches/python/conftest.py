from __future__ import annotations

import sys
from pathlib import Path

# The bench modules import each other by plain name.
sys.path.insert(0, str(Path(__file__).parent))
