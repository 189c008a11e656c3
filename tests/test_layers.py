"""Imports point one way (docs/ARCHITECTURE.md): every import of every module, function-level ones
included, goes to the same or a lower layer, and no chain of imports comes back to where it started.

    0 utils  <-  1 ldm.modules, taming, ldm.util  <-  2 ldm.models, ldm.trainer  <-  3 ldm.data, ldm.pairs,
    ldm.quality  <-  4 the pipeline: ldm.generation, ldm.export, ldm.segmentation, ldm.synthesizers, ...
    <-  5 apps: ldm.studio, ldm.demo  <-  6 scripts and the CLIs (main.py, generate_with_mask.py)

Scripts are thin (argument parsing and the logic live in the library; a script runs one library
command) and no test imports them.
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
    ("ldm.first_stage_check", 4), ("ldm.config_check", 4), ("ldm.train_all", 4), ("ldm.benchmarks", 4),
    ("ldm.studio", 5), ("ldm.demo", 5),
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


# ------------------------------------------------------------------------------------------ thin scripts
LIBRARY = ("ldm", "utils")
THIN = '''"""Usage."""
import sys

from ldm.export import cli

if __name__ == "__main__":
    sys.exit(cli())
'''


def _script_problems(path: Path, root: Path = ROOT) -> list[str]:
    """What makes ``path`` more than a thin script: anything but its docstring, ``import sys``, one import
    from the library and ``if __name__ == "__main__": sys.exit(<library command>())``."""
    name = path.relative_to(root)
    problems, library_imports = [], 0
    for i, node in enumerate(ast.parse(path.read_text(), str(path)).body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue                                                          # the docstring (usage)
        if isinstance(node, ast.Import) and [a.name for a in node.names] == ["sys"]:
            continue
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in LIBRARY:
            library_imports += 1
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
            call = node.body[0].value if len(node.body) == 1 and isinstance(node.body[0], ast.Expr) else None
            if (isinstance(call, ast.Call) and ast.unparse(call.func) == "sys.exit" and len(call.args) == 1
                    and isinstance(call.args[0], ast.Call) and isinstance(call.args[0].func, ast.Name)
                    and not call.args[0].args and not call.args[0].keywords):
                continue
            problems.append(f"{name}:{node.lineno}: the __main__ block is more than sys.exit(<library command>())")
            continue
        problems.append(f"{name}:{node.lineno}: {type(node).__name__} -- logic belongs in the library (ldm/, utils/)")
    if library_imports != 1:
        problems.append(f"{name}: {library_imports} library imports (one command expected)")
    return problems


def thin_scripts() -> list[Path]:
    """Every Python script under scripts/ except the benchmarks, which may keep their measuring code."""
    return sorted(p for p in (ROOT / "scripts").glob("*.py") if not p.name.startswith("benchmark_"))


def test_scripts_are_thin():
    assert thin_scripts(), "no scripts found"
    problems = [p for path in thin_scripts() for p in _script_problems(path)]
    assert not problems, "\n".join(problems)


def test_the_thin_script_check_catches_logic(tmp_path):
    """A function, an assignment, a second library import, a foreign import or work in the __main__ block
    makes a script fat."""
    fat = {
        "def": THIN + "\n\ndef helper():\n    return 1\n",
        "assign": THIN.replace("import sys\n", "import sys\nROOT = 1\n"),
        "second import": THIN.replace("import sys\n", "import sys\nfrom utils.cli import run_cli\n"),
        "foreign import": THIN.replace("import sys\n", "import sys\nimport torch\n"),
        "main block": THIN.replace("sys.exit(cli())", "sys.exit(run_cli('x', lambda: 0))"),
    }
    (tmp_path / "thin.py").write_text(THIN)
    assert _script_problems(tmp_path / "thin.py", tmp_path) == []
    for name, text in fat.items():
        (tmp_path / "fat.py").write_text(text)
        assert _script_problems(tmp_path / "fat.py", tmp_path), name


def _imports_scripts(path: Path, root: Path = ROOT) -> list[str]:
    """Lines of ``path`` that import the scripts: ``import scripts.x``, ``from scripts...`` or
    ``importlib.import_module("scripts...")`` (an f-string too)."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                arg = arg.values[0]
            names = [arg.value] if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else []
        if any(n == "scripts" or n.startswith("scripts.") for n in names):
            hits.append(f"{path.relative_to(root)}:{node.lineno}")
    return hits


def test_no_test_imports_scripts(tmp_path):
    """Tests call the library command a script runs, never the script module (the check itself is checked)."""
    hits = [h for p in sorted((ROOT / "tests").rglob("*.py")) for h in _imports_scripts(p)]
    assert not hits, "import the library module instead of scripts.*: " + ", ".join(hits)
    for text in ("import scripts.run_demo as rd\n", "from scripts.train_all import main\n",
                 "import importlib\nimportlib.import_module(f'scripts.{name}')\n"):
        (tmp_path / "t.py").write_text(text)
        assert _imports_scripts(tmp_path / "t.py", tmp_path), text


def test_the_package_ships_no_scripts():
    """pyproject.toml packages ldm, taming and utils; the console entry points are library functions."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(p.startswith("scripts") for p in include), include
    assert not (ROOT / "scripts" / "__init__.py").exists()
    for name, target in project["project"]["scripts"].items():
        assert not target.startswith("scripts"), (name, target)
