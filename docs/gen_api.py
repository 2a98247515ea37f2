"""Writes docs/api.md from the package's docstrings and the `_core` stubs.

    python docs/gen_api.py          # rewrite docs/api.md
    python docs/gen_api.py --check  # exit 1 if docs/api.md is out of date

tests/docs/test_docs.py runs the check, so the reference cannot drift from
the code.
"""

from __future__ import annotations

import argparse
import ast
import enum
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"
STUB = ROOT / "python" / "langcluster" / "_core.pyi"
EXTRA_MODULES = [
    "langcluster.metrics",
    "langcluster.types",
    "langcluster.integrations.langchain",
    "langcluster.testing",
]


def stub_signatures() -> dict[str, dict[str, str]]:
    """class -> method -> "(args) -> ret" from the stub file."""
    tree = ast.parse(STUB.read_text())
    out: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = out.setdefault(node.name, {})
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    args = ast.unparse(item.args)
                    ret = f" -> {ast.unparse(item.returns)}" if item.returns else ""
                    methods[item.name] = f"({args}){ret}"
    return out


STUBS = stub_signatures()


def first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


class _Raw:
    """An annotation kept as the source text it was written as."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def signature(owners: list[str], name: str, obj: Any) -> str:
    for owner in owners:
        if name in STUBS.get(owner, {}):
            text = STUBS[owner][name].replace("self, ", "").replace("(self)", "()")
            # Stubs must name type variables privately; the reader sees T, F.
            return re.sub(r"(?<![\w.])_(T_co|T|F)\b", r"\1", text)
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [
        p.replace(annotation=_Raw(p.annotation)) if isinstance(p.annotation, str) else p
        for p in sig.parameters.values()
    ]
    ret = sig.return_annotation
    ret = _Raw(ret) if isinstance(ret, str) else ret
    sig = sig.replace(parameters=params, return_annotation=ret)
    text = str(sig).replace("(self, ", "(").replace("(self)", "()")
    text = re.sub(r"<class '(\w+)'>", r"\1", text)
    return re.sub(r"<object object at 0x[0-9a-f]+>", "<missing>", text)


def public_members(cls: type) -> list[tuple[str, Any]]:
    members = []
    for name, value in sorted(vars(cls).items()):
        if name.startswith("_") and name not in ("__init__", "__call__"):
            continue
        described = isinstance(value, property | classmethod | staticmethod)
        if described or inspect.isgetsetdescriptor(value) or callable(value):
            members.append((name, value))
    for base in cls.__mro__[1:]:  # Rust methods of a Python subclass
        if base.__module__ == "langcluster._core":
            seen = {n for n, _ in members}
            for name, value in sorted(vars(base).items()):
                if not name.startswith("_") and name not in seen:
                    members.append((name, value))
    return members


def settings_signature(obj: type) -> str | None:
    """A config class's signature: its component's parameters after the first."""
    component = getattr(obj.__init__, "__settings_of__", None)
    if component is None:
        return None
    owners = [c.__name__ for c in component.__mro__ if c.__module__ == "langcluster._core"]
    stub_new = any("__new__" in STUBS.get(o, {}) for o in owners)
    full = signature(owners if stub_new else [], "__new__" if stub_new else "__init__", component)
    inner = full.split(" -> ")[0].strip()[1:-1]
    params = [p.strip() for p in re.split(r",\s*(?![^\[\]()]*[\])])", inner) if p.strip()]
    if params and params[0] in ("cls", "self"):
        params = params[1:]
    return "(" + ", ".join(params[1:]) + ")"


def document(module: str, name: str, obj: Any) -> list[str]:
    lines = []
    if inspect.isclass(obj) and issubclass(obj, enum.Enum):
        lines.append(f"### `{name}`\n")
        lines.append(f"*{module}*\n")
        lines.append((inspect.getdoc(obj) or "").strip() + "\n")
        lines += [f"- `{member.name}` = `{member.value!r}`" for member in obj]
        lines.append("")
    elif inspect.isclass(obj):
        owners = [c.__name__ for c in obj.__mro__ if c.__module__ == "langcluster._core"]
        stub_new = any("__new__" in STUBS.get(o, {}) for o in owners)
        init = "__new__" if stub_new else "__init__"
        sig = settings_signature(obj) or signature(owners if stub_new else [], init, obj)
        sig = sig.replace("(cls, ", "(").replace("(cls)", "()")
        sig = sig.split(" -> ")[0]
        lines.append(f"### `{name}{sig}`\n")
        lines.append(f"*{module}*\n")
        doc = inspect.getdoc(obj)
        if doc:
            lines.append(doc.strip() + "\n")
        for member, value in public_members(obj):
            if member in ("__init__",):
                continue
            target = value.fget if isinstance(value, property) else value
            if isinstance(value, classmethod | staticmethod):
                target = value.__func__
            if isinstance(value, property) or inspect.isgetsetdescriptor(value):
                text = f"- `{member}` (property)"
            else:
                text = f"- `{member}{signature(owners, member, target)}`"
            summary = first_paragraph(inspect.getdoc(target))
            lines.append(f"{text}: {summary}" if summary else text)
        lines.append("")
    elif callable(obj):
        lines.append(f"### `{name}{signature([], name, obj)}`\n")
        lines.append(f"*{module}*\n")
        lines.append((inspect.getdoc(obj) or "").strip() + "\n")
    elif isinstance(obj, dict) and all(hasattr(v, "help") for v in obj.values()):
        title = "the metrics, by Prometheus name (a counter is exposed with `_total`)"
        lines.append(f"### `{name}`\n\n*{module}*: {title}:\n")
        for key, metric in obj.items():
            labels = ", ".join(metric.labels)
            lines.append(
                f"- `{key}` ({metric.kind}; {labels}; OpenTelemetry `{metric.otel}`): {metric.help}"
            )
        lines.append("")
    else:
        lines.append(f"### `{name}`\n\n*{module}*: `{obj!r}`\n")
    return lines


def render() -> str:
    import langcluster

    lines = [
        "# API reference",
        "",
        "Generated from the docstrings and `_core.pyi` by `python docs/gen_api.py`;",
        "a test fails when this file is out of step with the code. Narrative and",
        "examples: [user-guide.md](user-guide.md).",
        "",
        "## `langcluster`",
        "",
    ]
    for name in sorted(langcluster.__all__, key=str.lower):
        obj = getattr(langcluster, name)
        if name == "__version__":
            continue
        if inspect.ismodule(obj):
            anchor = obj.__name__.replace(".", "")
            lines += [f"### `{name}`\n", f"A subpackage: see [`{obj.__name__}`](#{anchor}).\n"]
            continue
        lines += document(getattr(obj, "__module__", "langcluster") or "langcluster", name, obj)
    for module_name in EXTRA_MODULES:
        module = importlib.import_module(module_name)
        lines += [f"## `{module_name}`", "", first_paragraph(module.__doc__), ""]
        for name in module.__all__:
            if name not in langcluster.__all__:  # documented above already
                lines += document(module_name, name, getattr(module, name))
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    opts = parser.parse_args()
    text = render()
    if opts.check:
        if OUT.read_text() != text:
            print("docs/api.md is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
