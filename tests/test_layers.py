"""Imports point one way (docs/ARCHITECTURE.md): every import of every module, function-level ones
included, goes to the same or a lower layer, and no chain of imports comes back to where it started.

    0 utils  <-  1 ldm.modules, taming, ldm.util  <-  2 ldm.models, ldm.trainer  <-  3 ldm.data, ldm.pairs,
    ldm.quality  <-  4 the pipeline: ldm.generation, ldm.export, ldm.segmentation, ldm.synthesizers, ...
    <-  5 apps: ldm.studio  <-  6 scripts and the CLIs (main.py, generate_with_mask.py)
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = (
    ("utils", 0),
    ("taming", 1), ("ldm.util", 1), ("ldm.lr_scheduler", 1), ("ldm.modules", 1),
    ("ldm.models", 2), ("ldm.trainer", 2),
    ("ldm.data", 3), ("ldm.pairs", 3), ("ldm.quality", 3),
    ("ldm.generation", 4), ("ldm.export", 4), ("ldm.segmentation", 4), ("ldm.synthesizers", 4),
    ("ldm.first_stage_check", 4), ("ldm.config_check", 4),
    ("ldm.studio", 5),
    ("scripts", 6), ("main", 6), ("generate_with_mask", 6),
)
PACKAGES = ("utils", "taming", "ldm", "scripts")


def layer(module: str) -> int | None:
    if module == "ldm":  # the package's own __init__ (imports nothing)
        return 0
    best = None
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    return None if best is None else best[1]


def modules() -> dict[str, Path]:
    out = {"main": ROOT / "main.py", "generate_with_mask": ROOT / "generate_with_mask.py"}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported project module: line}, function-level and relative imports included."""
    mods = modules()

    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r is not None and r != name:
                    edges.setdefault(r, node.lineno)
        graph[name] = edges
    return graph


def test_every_project_module_has_a_layer():
    unranked = sorted(m for m in modules() if layer(m) is None)
    assert not unranked, f"add these modules to LAYERS (and docs/ARCHITECTURE.md): {unranked}"


def test_no_import_points_up():
    up = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)}) at line {line}"
          for m, edges in import_graph().items() for t, line in edges.items()
          if layer(t) is not None and layer(m) is not None and layer(t) > layer(m)]
    assert not up, "\n".join(up)


def test_no_import_cycle():
    graph = import_graph()
    cycles = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_function_level_and_relative_imports():
    """The walker must catch an upward import hidden inside a function, or the two tests above prove nothing."""
    graph = import_graph()
    assert "utils.run_folder" in graph["ldm.models.diffusion.mask_ti"]          # inside load_mask_run
    assert "ldm.models.diffusion.schedule" in graph["ldm.models.diffusion.samplers.base"]  # from ..schedule
