"""Write every dvc.yaml stage's code deps from its import closure, so they cannot drift.

A stage's code deps are the files of aladin/ and stages/ that its `python -m` module imports,
directly or not (read from the source: nothing is imported). A folder stands for its files when
the closure holds every one of them. Deps outside aladin/ and stages/ (data, models, inputs/*.json)
are kept as written. tests/test_params.py requires the file to equal what this writes.

Usage: python scripts/dvc_deps.py [--check]     (--check: exit 1 and name the stages that differ)
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = ROOT / "dvc.yaml"
CODE = ("aladin", "stages")
LAZY = re.compile(r"^aladin(\.\w+)+:\w+$")      # "aladin.models.x:Class", imported lazily by name
WIDTH = 110


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
            out.add(node.value.partition(":")[0])
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
    """Files of aladin/ and stages/ that `module` imports, directly or not, itself included."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):          # a module's parent packages run too
            path = _module_file(".".join(parts[:i]))
            if path is not None and path not in seen and parts[0] in CODE:
                seen.add(path)
                todo.extend(_imports(path))
    return seen


def _folder_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def code_deps(module: str) -> list[str]:
    """The closure as repo-relative paths, a folder in place of its files when it holds only closure files."""
    closure = import_closure(module)
    folders = sorted({p.parent for p in closure if p.parent not in (ROOT / c for c in CODE)}, key=lambda p: len(p.parts))
    deps: set[Path] = set(closure)
    for folder in folders:
        files = _folder_files(folder)
        if files <= closure and not any(f in folder.parents for f in deps if f.is_dir()):
            deps = {d for d in deps if folder not in d.parents} | {folder}
    return sorted(str(d.relative_to(ROOT)) for d in deps)


def stage_module(cmd: str) -> str:
    words = cmd.split()
    if words[:2] != ["python", "-m"]:
        raise SystemExit(f"dvc.yaml: stage command {cmd!r} is not `python -m <module>`")
    return words[2]


def python_stages(stages: dict) -> dict:
    """The `python -m` stages; a `foreach` stage (dvc.yaml's `external`) runs no code."""
    return {name: stage for name, stage in stages.items() if "foreach" not in stage}


def expected_deps(stage: dict) -> list[str]:
    """The stage's module first, then its other code deps, then its non-code deps as written."""
    module = stage_module(stage["cmd"])
    own = module.replace(".", "/") + ".py"
    code = [d for d in code_deps(module) if d != own]
    other = [d for d in stage.get("deps", []) if Path(d).parts[0] not in CODE]
    return [own, *code, *other]


def _flow(deps: list[str], indent: int) -> str:
    """`deps: [a, b, ...]` wrapped at WIDTH, continuation lines aligned under the first item."""
    lead = " " * indent + "deps: ["
    lines, line = [], lead
    for i, d in enumerate(deps):
        item = d + ("]" if i == len(deps) - 1 else ",")
        if len(line) + len(item) + 1 > WIDTH and line.strip() not in ("deps: [",):
            lines.append(line.rstrip())
            line = " " * len(lead)
        line += item + ("" if line.endswith("[") or line.isspace() else "") + " "
    lines.append(line.rstrip())
    return "\n".join(lines)


def render(text: str) -> str:
    """dvc.yaml's text with every stage's `deps:` replaced, comments and layout otherwise kept."""
    stages = python_stages(yaml.safe_load(text)["stages"])
    out = text
    for name, stage in stages.items():
        pattern = re.compile(rf"(^  {re.escape(name)}:\n(?:(?!^  \S).*\n)*?)(^(\s+)deps: \[[^\]]*\])", re.M)
        m = pattern.search(out)
        if m is None:
            raise SystemExit(f"dvc.yaml: stage {name} has no `deps: [...]` list to generate")
        out = out[:m.start(2)] + _flow(expected_deps(stage), len(m.group(3))) + out[m.end(2):]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="report stages whose deps differ; write nothing")
    args = ap.parse_args()
    text = DVC_YAML.read_text()
    new = render(text)
    if args.check:
        old, gen = yaml.safe_load(text)["stages"], yaml.safe_load(new)["stages"]
        stale = [s for s in old if "cmd" in old[s] and old[s].get("deps") != gen[s].get("deps")]
        if stale:
            print(f"dvc.yaml: deps out of date in {', '.join(stale)}; run python scripts/dvc_deps.py")
            sys.exit(1)
        return
    if new != text:
        tmp = DVC_YAML.with_suffix(".yaml.tmp")
        tmp.write_text(new)
        tmp.replace(DVC_YAML)
        print("dvc.yaml: deps rewritten")


if __name__ == "__main__":
    main()
