"""The package's layers, written once: every import in hirune (at module level or inside a
function) points to its own layer or one below, and no modules import each other in a
circle.  A broken variant of each rule is shown to fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hirune

ROOT = Path(hirune.__file__).parent

# bottom to top; a module may import from its own layer and the layers below it
LAYERS = [
    ("nn", "checkpoint", "viz", "video_io", "allocator"),  # network pieces; the checkpoint format; pictures;
                                                           # video files; the C allocator
    ("process",),                  # forward processes, parameterizations, the denoiser protocol
    ("data",),                     # datasets, captions, dequantization
    ("models",),                   # networks (they take t as numbers: no process)
    ("sampling",),                 # samplers, time grids, integrators, guidance, likelihood
    ("metrics",),                  # distances, the shipped evaluator network
    ("objectives",),               # losses
    ("evaluation",),               # scoring functions over models, denoisers and samples
    ("distributed",),              # torchrun, strategies, whole and sharded state, planner
    ("families",),                 # one object per kind of model
    ("training",),                 # config, trainer, loop, loader, presets
    ("inference",),                # generate, guide, edit
    ("playbook",),                 # the training notes as measurements (teaching code, unused by the trainer)
    ("reproduce",),                # a note's claim in one command (hirune reproduce)
    ("serve",),                    # hirune serve: a local web page over trained runs
    ("cli", "compat", "__init__", "__main__"),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(imported hirune module, line) for every import statement in the file, relative ones
    resolved; `from pkg import name` counts as pkg.name where that is a module."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "hirune"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "hirune":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if _is_module(sub, root) else target, node.lineno))
    return out


def _is_module(name: str, root: Path) -> bool:
    p = root.parent / Path(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYER[top]


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        edges.setdefault(module_name(path, root), set()).update(m for m, _ in imports(path, root))
    return edges


def upward_imports(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        for target, line in imports(path, root):
            if layer_of(target) > layer_of(me):
                bad.append(f"{path.relative_to(root)}:{line} {me} imports {target} from a higher layer")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_package_has_a_layer():
    tops = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert tops <= set(LAYER), f"modules without a layer: {sorted(tops - set(LAYER))}"


def test_imports_point_down():
    assert upward_imports() == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_rules_catch_broken_variants(tmp_path):
    """Harness: a copy of the package with a process module that imports the trainer inside a
    function (an upward import, and with the trainer's imports a cycle) fails both rules;
    a module of no layer fails the first."""
    import shutil

    root = tmp_path / "hirune"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    assert upward_imports(root) == [] and cycles(graph(root)) == []
    (root / "process" / "late.py").write_text("def f():\n    from ..training import trainer\n")
    (root / "process" / "__init__.py").write_text((root / "process" / "__init__.py").read_text()
                                                  + "from . import late\n")
    assert any("hirune.process.late imports hirune.training.trainer" in b for b in upward_imports(root))
    assert any("hirune.process.late" in c for c in cycles(graph(root)))
    with pytest.raises(KeyError):
        layer_of("hirune.unlayered")
