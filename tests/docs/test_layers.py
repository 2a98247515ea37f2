"""The package's tiers import only the tiers below them (docs/layout.md):
shared state works on the parts a cluster hands it, a failover manager knows
no cluster, and so on. Type-only imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "langcluster"

# Bottom up: each tier may import the ones before it (and the underscored
# machinery, which imports no tier above it).
TIERS = [
    "errors", "types", "node", "breaker", "discovery", "registry", "health", "cache",
    "failover", "kv", "shared", "cluster", "integrations", "metrics", "testing", "cli",
]  # fmt: skip


def imports(path: Path) -> set[str]:
    """The langcluster modules one file imports, as their first component."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(n.split(".")[1] for n in names if n.startswith("langcluster."))
    return found


def tier_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def test_every_tier_imports_only_the_tiers_below_it() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tier = tier_of(path)
        if tier not in TIERS and not tier.startswith("_"):
            raise AssertionError(f"{path}: tier {tier!r} is not placed in TIERS")
        below = set(TIERS[: TIERS.index(tier)]) if tier in TIERS else set()
        gathers = tier in ("__init__", "__main__")  # the public names, the entry point
        for name in imports(path) - {tier}:
            if not (gathers or name.startswith("_") or name in below):
                wrong.append(f"{path.relative_to(PACKAGE)} ({tier}) imports {name}")
    assert wrong == []


def test_the_underscored_machinery_imports_no_tier() -> None:
    for path in sorted(PACKAGE.glob("_*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        tiers = {name for name in imports(path) if not name.startswith("_")}
        assert tiers <= {"errors", "types"}, f"{path.name} imports {sorted(tiers)}"
