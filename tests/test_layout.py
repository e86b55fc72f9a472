"""The package's folders are the pipeline's phases, and imports only run downwards.

Each top-level module or subpackage of `aladin` sits in a layer; a module may import from its own
layer or a lower one, never a higher one, so the tree reads bottom-up as the pipeline does.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "aladin"

# Low to high: cross-cutting helpers first, then the pipeline's phases in the order they depend
# on each other (the DVC order, except that evaluation's metrics serve training's validation).
LAYERS: list[set[str]] = [
    {"errors", "yaml_load", "io", "runtime"},
    {"config"},
    {"params", "distributed", "tracking", "store", "inputs"},
    {"data", "datasets"},
    {"features"},
    {"models"},
    {"retrieval"},
    {"evaluation"},     # below training: training validates on val with the evaluation metrics
    {"training"},
    {"latency"},
    {"search", "collection"},
]


def unit(module: str) -> str:
    """'aladin.retrieval.index' -> 'retrieval'; 'aladin.params' -> 'params'."""
    return module.split(".")[1]


def layer_of(name: str) -> int:
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise AssertionError(f"aladin/{name} is in no layer of tests/test_layout.py: place it")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute aladin module) for every import in `path`, relative ones resolved."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    here = list(rel if rel[-1] == "__init__" else rel[:-1])
    if here and here[-1] == "__init__":
        here = here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" for a in node.names] if mod.count(".") == 0 else [mod]
            found += [(node.lineno, m) for m in names if m.startswith("aladin.")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("aladin.")]
    return found


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.iterdir():
        if path.name.startswith(("_", ".")) or path.name == "__pycache__":
            continue
        if path.is_dir() or path.suffix == ".py":
            layer_of(path.stem)


def test_no_import_runs_upwards() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        src = unit("aladin." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for line, mod in imports(path):
            if layer_of(unit(mod)) > layer_of(src):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_import_resolution_on_a_hand_built_case(tmp_path: Path) -> None:
    pkg = tmp_path / "aladin" / "retrieval"
    pkg.mkdir(parents=True)
    src = pkg / "x.py"
    src.write_text("from ..models.matching import M\nfrom . import index\nimport aladin.params\n")
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        assert imports(src) == [(1, "aladin.models.matching"), (2, "aladin.retrieval"),
                                (3, "aladin.params")]
    finally:
        ROOT = old


def _defined(module_file: Path) -> set[str]:
    """Top-level names a module defines or imports (what `from module import name` can take)."""
    tree = ast.parse(module_file.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def test_every_imported_name_exists():
    """`from aladin.x import name` anywhere in the code (lazy imports inside functions included)
    names something aladin.x defines: a moved function cannot leave a stale import behind."""
    missing = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "stages").glob("*.py")]):
        here = list(path.relative_to(ROOT).with_suffix("").parts[:-1])     # the package `path` is in
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = here[: len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            if not mod.startswith("aladin"):
                continue
            target = ROOT.joinpath(*mod.split("."))
            file = target.with_suffix(".py") if target.with_suffix(".py").is_file() else target / "__init__.py"
            defined = _defined(file)
            for a in node.names:
                if a.name not in defined and not (target / f"{a.name}.py").is_file() and not (target / a.name).is_dir():
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {mod} has no {a.name}")
    assert missing == []
