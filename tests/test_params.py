"""params.yaml is the one source of values: every key required, code defaults equal to it,
configs/coco.yaml complete, and dvc.yaml's params and deps in step with the code."""
from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from aladin import params as P
from aladin.errors import ConfigError
from scripts.dvc_deps import ROOT, expected_deps
from tests._params import DEFAULTS, write_params

COCO = yaml.safe_load((ROOT / "configs" / "coco.yaml").read_text())
DVC = {name: stage for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()
       if "cmd" in stage}              # foreach stages run no Python script


def keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= keys(v, f"{prefix}{k}.")
    return out


def test_params_and_coco_config_have_the_same_keys():
    assert keys(DEFAULTS) == keys(COCO)


@pytest.mark.parametrize("path", [ROOT / "params.yaml", ROOT / "configs" / "coco.yaml"])
def test_every_section_loads(path):
    for name in P.SECTIONS:
        P.load(name, path)
    assert isinstance(P.seed(path), int)


def _defaults(cls: type, raw: dict, where: str):
    """(name, code default, params.yaml value) of every field with a default, nested included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            yield f"{where}.{f.name}", f.default, raw[f.name]
        elif f.default_factory is not dataclasses.MISSING:
            yield f"{where}.{f.name}", f.default_factory(), raw[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _defaults(hints[f.name], raw[f.name], f"{where}.{f.name}")


def test_code_defaults_equal_params_yaml():
    found = [(name, code, yaml_value) for section, cls in P.SECTIONS.items()
             for name, code, yaml_value in _defaults(cls, DEFAULTS[section], section)]
    assert len(found) > 30                                  # the model, loss and index components
    assert [f for f in found if f[1] != f[2]] == []


def test_a_missing_key_is_an_error_naming_it(tmp_path):
    full = write_params(tmp_path)
    del full["distill"]["optim"]["lr"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full))
    with pytest.raises(ConfigError, match=r"distill\.optim\.lr: missing required parameter"):
        P.load("distill", tmp_path / "params.yaml")
    full["distill"]["optim"]["lr"] = 0.001
    del full["distill"]["temperature"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full))
    with pytest.raises(ConfigError, match=r"distill\.temperature: missing required parameter"):
        P.load("distill", tmp_path / "params.yaml")


def test_triplet_baseline_params_are_the_declared_keys():
    declared = [p for p in DVC["student_triplet"]["params"] if p.startswith("distill.")]
    assert declared == [f"distill.{k}" for k in P.TRIPLET_BASELINE_KEYS]


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_deps_are_its_import_closure(stage):
    assert DVC[stage]["deps"] == expected_deps(DVC[stage]), \
        f"{stage}: dvc.yaml deps differ from its import closure; run python scripts/dvc_deps.py"


# -- each stage's `params:` list against the keys its script reads -------------------------------
# tracking.* only says where MLflow writes: changing it must not re-run any stage.
UNTRACKED_SECTIONS = {"tracking"}


def _imported_functions(tree: ast.Module, module: str) -> dict[str, tuple[Path, str]]:
    """name -> (file, function name) of every `from aladin... import f` in a module."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[:-node.level]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.startswith("aladin"):
                path = ROOT.joinpath(*base.split("."))
                path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
                for a in node.names:
                    out[a.asname or a.name] = (path, a.name)
    return out


def _function(path: Path, name: str) -> tuple[ast.FunctionDef, ast.Module] | None:
    tree = ast.parse(path.read_text())
    return next(((n, tree) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _uses(body: ast.AST, var: str, section: str, tree: ast.Module, module: str, depth: int) -> set[str]:
    """Keys of `section` read through `var` inside `body`: attribute chains, and what an aladin
    function it is passed to reads through its parameter (followed `depth` calls deep; a call that
    cannot be followed reads the whole section)."""
    parents = {c: p for p in ast.walk(body) for c in ast.iter_child_nodes(p)}
    funcs = _imported_functions(tree, module)
    local = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    reads = set()
    for node in ast.walk(body):
        if not (isinstance(node, ast.Name) and node.id == var and isinstance(node.ctx, ast.Load)):
            continue
        attrs, top = [], node
        while isinstance(parents.get(top), ast.Attribute):
            top = parents[top]
            attrs.append(top.attr)
        parent = parents.get(top)
        if attrs:
            reads.add(".".join([section, *attrs]))
            continue
        if isinstance(parent, ast.Call) and top is not parent.func and isinstance(parent.func, ast.Name) and depth:
            name = parent.func.id
            target = (local[name], tree, module) if name in local else None
            if target is None and name in funcs:
                found = _function(*funcs[name])
                if found:
                    path = funcs[name][0]
                    target = (*found, ".".join(path.relative_to(ROOT).with_suffix("").parts))
            if target is not None:
                fn, ftree, fmod = target
                params_ = [a.arg for a in fn.args.args + fn.args.kwonlyargs]
                if top in parent.args:
                    arg = params_[parent.args.index(top)]
                else:
                    arg = next(k.arg for k in parent.keywords if k.value is top)
                reads |= _uses(fn, arg, section, ftree, fmod, depth - 1)
                continue
        reads.add(section)                                    # used whole
    return reads


def _reads(module_path: Path) -> set[str]:
    """Keys a stage script reads: `params.load("s")` chained, or through the variable it is bound to
    (:func:`_uses`), and `params.seed()`."""
    tree = ast.parse(module_path.read_text())
    module = ".".join(module_path.relative_to(ROOT).with_suffix("").parts)
    reads: set[str] = set()

    def section_of(node) -> str | None:
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "params"):
            return node.args[0].value
        return None

    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "params":
            if node.func.attr == "seed":
                reads.add("seed")
            elif node.func.attr == "validate_all":          # checks every section and the seed
                reads |= {"seed", *P.SECTIONS}
        section = section_of(node)
        if section is None:
            continue
        parent = parents[node]
        if isinstance(parent, ast.Tuple):                 # a, b = params.load(..), ...
            target = parents[parent].targets[0].elts[parent.elts.index(node)]
        elif isinstance(parent, ast.Assign):
            target = parent.targets[0]
        else:
            target = None
        if isinstance(target, ast.Name):
            fn = next(p for p in (parents.get(parent), parent, *ast.walk(tree)) if isinstance(p, ast.FunctionDef))
            reads |= _uses(fn, target.id, section, tree, module, depth=3)
            # dataclasses.replace(cfg, ...) rebinds the same section under the same name: nothing more to do
            continue
        attrs, top = [], node
        while isinstance(parents.get(top), ast.Attribute):
            top = parents[top]
            attrs.append(top.attr)
        if attrs:
            reads.add(".".join([section, *attrs]))
        elif isinstance(parents.get(node), ast.Call):
            reads.add(section)
    return {r for r in reads if r.split(".")[0] not in UNTRACKED_SECTIONS}


def _covered(key: str, declared: list[str]) -> bool:
    return any(key == d or key.startswith(d + ".") for d in declared)


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_params_are_the_keys_it_reads(stage):
    module = ROOT / (DVC[stage]["cmd"].split()[2].replace(".", "/") + ".py")
    declared = DVC[stage].get("params", [])
    reads = _reads(module)
    if stage == "student_triplet":          # the triplet baseline reads only its declared keys (tested above)
        reads = {r for r in reads if not r.startswith("distill")} | {f"distill.{k}" for k in P.TRIPLET_BASELINE_KEYS}
    assert sorted(r for r in reads if not _covered(r, declared)) == [], f"{stage}: reads params dvc.yaml does not declare"
    unread = [d for d in declared if not any(_covered(r, [d]) or _covered(d, [r]) for r in reads)]
    assert unread == [], f"{stage}: dvc.yaml declares params its script never reads"


def test_reads_follow_a_section_into_the_functions_it_is_passed_to(tmp_path):
    stage = ROOT / "stages" / "_probe_reads.py"
    stage.write_text("from aladin import params\nfrom aladin.latency.encoders import encoder_latency\n\n"
                     "def main():\n    cfg = params.load('latency')\n    encoder_latency(1, 2, [], [], cfg)\n"
                     "    x = params.load('index').index.kind\n    params.seed()\n")
    try:
        assert _reads(stage) == {"latency.n_queries", "latency.warmup", "index.index.kind", "seed"}
    finally:
        stage.unlink()
