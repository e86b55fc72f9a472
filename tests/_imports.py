"""The repo-internal import closure of a module, read from the source (no import executed)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAZY = re.compile(r"^aladin(\.\w+)+:\w+$")


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    package = ".".join(path.relative_to(ROOT).parent.parts)     # the package `path` belongs to
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY.match(node.value):
            out.add(node.value.partition(":")[0])                 # "aladin.models.x:Class", imported lazily
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)     # `from pkg import module`
    return out


def import_closure(module: str) -> set[Path]:
    """Files of the repo (aladin/, stages/) that `module` imports, directly or not, itself included."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):          # a module's parent packages run too
            path = _module_file(".".join(parts[:i]))
            if path is not None and path not in seen and parts[0] in ("aladin", "stages"):
                seen.add(path)
                todo.extend(_imports(path))
    return seen
