"""The import graph of pipeline/: layers that run one way, and no import circles; no function over 60 lines;
and a model's record (model.Record) named by model.py alone.

A module may import only modules of its own layer or a lower one (read from its source with `ast`, imports
inside functions included), and no chain of imports may lead back to where it started. A new module gets a
row in `LAYERS`: where it sits says what it may use.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# lowest first; module names relative to the package ("stages" is stages/__init__.py)
LAYERS = [
    {"__init__", "strategies", "config", "stop", "memory", "progress", "gc_off"},        # foundation
    {"data", "model", "surgery", "train", "metrics", "stats", "decision", "checks", "selection"},  # models, numbers
    # the store, processes, outputs
    {"backend", "tracking", "checkpoint", "liveness", "jobs", "registry", "serving", "report", "study", "reuse"},
    {"stages.common", "stages.heads", "stages.reference"},                               # what stages share
    {"stages.leaderboard", "stages.verdict", "stages.champion"},                         # compare's parts
    {"stages.baseline", "stages.head_swap", "stages.slim", "stages.tune", "stages.compare"},  # one stage each
    {"stages.convert"},                                                                  # all stages in order
    {"stages"},                                                                          # the stages' front
    {"cli", "__main__"},                                                                 # the command line
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def resolve(name: str) -> str:
    """The module of LAYERS that `name` (relative to the package) is, or lies in: a.b.c -> a.b -> a."""
    while name not in LAYER and "." in name:
        name = name.rpartition(".")[0]
    return name


def imports(path: Path) -> set[str]:
    """The package's modules that the file at `path` imports, relative to the package."""
    package = list(path.relative_to(PACKAGE).with_suffix("").parts)[:-1]  # an __init__.py's is its own folder
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            names = ([".".join(base + node.module.split("."))] if node.module else
                     [".".join(base + [a.name]) for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pipeline":
            names = [node.module.partition(".")[2]]
        elif isinstance(node, ast.Import):
            names = [a.name.partition(".")[2] for a in node.names if a.name.split(".")[0] == "pipeline"]
        else:
            continue
        found.update(resolve(n or "__init__") for n in names)
    found.discard(module_name(path))
    return found


GRAPH = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    missing = sorted(set(GRAPH) - set(LAYER))
    assert not missing, f"add {missing} to a layer of LAYERS in tests/test_layers.py"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_module_imports_only_its_layer_or_below(module):
    if module not in LAYER:
        pytest.skip("no layer yet (test_every_module_has_a_layer)")
    upward = sorted(m for m in GRAPH[module] if LAYER.get(m, -1) > LAYER[module])
    assert not upward, f"{module} (layer {LAYER[module]}) imports {upward} from a higher layer"


def test_no_import_circles():
    def cycle_from(start: str, node: str, path: list[str], seen: set[str]) -> list[str] | None:
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                found = cycle_from(start, nxt, path + [nxt], seen)
                if found:
                    return found
        return None

    circles = {tuple(c) for m in sorted(GRAPH) if (c := cycle_from(m, m, [m], set())) and m == min(c)}
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in sorted(circles))


def test_the_graph_sees_relative_and_absolute_imports():
    """The reader itself: a relative import from a stage, a package import and an import inside a function."""
    assert {"config", "stages.common", "stages.heads", "train"} <= GRAPH["stages.baseline"]
    assert "stages" in GRAPH["cli"]  # `from . import stages`, inside a function
    assert "surgery" in GRAPH["checkpoint"]  # `from .surgery import build`, inside a function


MAX_LINES = 60  # a function longer than this is split into named pieces that read top to bottom


def test_no_function_over_60_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # from `def` to its last line, docstring included
                where = (path.relative_to(PACKAGE).as_posix(), node.name)
                if lines > MAX_LINES:
                    long.append(f"{where[0]}::{where[1]} ({lines} lines)")
    assert not long, "split into named pieces: " + ", ".join(long)


def test_only_model_py_names_the_attribute_a_models_record_rides_in():
    """A model's recipe, start and rule live in one Record (pipeline/model.py), read and written through model.py's
    functions: no other module (nor test) names the attribute that carries it, or the loose attributes it replaced."""
    [record] = [n.value.value for n in ast.parse((PACKAGE / "model.py").read_text()).body
                if isinstance(n, ast.Assign) and [getattr(t, "id", None) for t in n.targets] == ["RECORD"]]
    names = {record, "reg2cls_arch", "reg2cls_start", "reg2cls_rule"}
    here = Path(__file__).resolve()
    files = [p for p in [*sorted(PACKAGE.rglob("*.py")), *sorted(here.parent.rglob("*.py"))]
             if p not in (PACKAGE / "model.py", here)]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr in names) or (
                    isinstance(node, ast.Constant) and node.value in names):
                found.append(f"{path.name}:{node.lineno}")
    assert not found, "use model.record_of / mark_start / start_of / set_rule / fitted_rule: " + ", ".join(found)
