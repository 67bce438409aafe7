"""The house keeps its shape: every module is on the map (docs/architecture.md), imports only go
down the layers the map draws, no modules import each other in a circle (imports inside
functions counted), no module passes 600 lines or takes a standard-library name, and the 0.1
module paths that saved configs name still resolve, with a warning."""

from __future__ import annotations

import ast
import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "pdalign"
PAGE = ROOT / "docs" / "architecture.md"
MAX_LINES = 600


def modules() -> dict[str, Path]:
    """{dotted name: path} of every module of the package (``__init__`` as its package)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The pdalign modules ``path`` imports, at any depth (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:  # `from pdalign.training import build` names a module
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known}


def layers() -> list[set[str]]:
    """The packages of the page's Layers block, top first (leading names of each line)."""
    block = PAGE.read_text(encoding="utf-8").split("## Layers", 1)[1].split("```")[1]
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    out = []
    for line in block.strip().splitlines():
        names = set()
        for word in line.split():
            if word not in packages:
                break
            names.add(word)
        out.append(names)
    return out


def test_every_module_is_on_the_map_and_the_map_names_only_modules():
    text = PAGE.read_text(encoding="utf-8")
    named = set(re.findall(r"`(pdalign/[\w/]+\.py)`", text))
    files = {str(p.relative_to(ROOT)) for p in modules().values()}
    assert files - named == set(), "modules missing from docs/architecture.md"
    assert named - files == set(), "docs/architecture.md names modules that do not exist"


def test_imports_only_go_down_the_layers():
    """A module of package A imports from package B only when B is A or below A on the map."""
    known = set(modules())
    rank = {pkg: i for i, names in enumerate(layers()) for pkg in names}
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert set(rank) == packages, "the Layers block must list every subpackage once"
    up = []
    for name, path in modules().items():
        parts = name.split(".")
        if len(parts) < 2:  # pdalign/__init__.py and compat.py sit above the subpackages
            continue
        for target in imports(path, known):
            tparts = target.split(".")
            if len(tparts) > 1 and tparts[1] != parts[1] and rank[tparts[1]] <= rank[parts[1]]:
                up.append(f"{name} -> {target}")
    assert up == []


def test_no_import_circle_counting_imports_inside_functions():
    known = set(modules())
    graph = {name: imports(path, known) - {name} for name, path in modules().items()}
    # a package's __init__ re-exporting its modules is not an edge back into them
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            assert visit(node) is None


def test_no_pdalign_import_inside_a_function_and_every_other_one_says_why():
    """An import sits inside a function only for a heavy optional dependency, with its reason
    in a comment on its line or the line above."""
    bad = []
    for path in list(modules().values()) + sorted((ROOT / "constraints").glob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef,
                                                                  ast.AsyncFunctionDef))
                  for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if id(node) not in nested:
                continue
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if module and module.split(".")[0] == "pdalign":
                bad.append(f"{where}: {module} imported inside a function")
            elif "#" not in lines[node.lineno - 1] + lines[node.lineno - 2]:
                bad.append(f"{where}: {module} imported inside a function with no reason")
    assert bad == []


def test_no_module_over_600_lines_and_no_standard_library_name():
    long = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in modules().items()}
    assert {n: k for n, k in long.items() if k > MAX_LINES} == {}
    shadowing = {n for n in modules() if n.split(".")[-1] in sys.stdlib_module_names}
    assert shadowing == set()


def test_pyproject_ships_every_package_and_the_commands_point_at_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(project["tool"]["setuptools"]["packages"])
    on_disk = {n for n, p in modules().items() if p.name == "__init__.py"}
    assert listed == on_disk | {"pdalign.constraints"}
    scripts = project["project"]["scripts"]
    assert len(scripts) == 7
    for command, target in scripts.items():  # pdalign-eval -> pdalign.cli.eval:main
        assert target == f"pdalign.cli.{command.removeprefix('pdalign-')}:main"
        assert callable(getattr(importlib.import_module(target.split(":")[0]), "main"))


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_old_target_paths_resolve_to_the_new_classes_with_a_deprecation_warning():
    """A run config saved by 0.1 names ``pdalign.losses.DPO``; a 0.1 plugin imports
    ``pdalign.constraint``. Both still work for this release, each with one warning."""
    from hydra.utils import get_class

    import pdalign
    from pdalign.contract.rollout import RolloutConstraint
    from pdalign.objectives import DPO, KTO

    for old in ("pdalign.losses", "pdalign.constraint"):
        sys.modules.pop(old, None)
        if hasattr(pdalign, old.split(".")[1]):
            delattr(pdalign, old.split(".")[1])
    with pytest.warns(DeprecationWarning, match=r"pdalign\.losses moved to pdalign\.objectives"):
        assert get_class("pdalign.losses.DPO") is DPO
    assert get_class("pdalign.losses.KTO") is KTO
    with pytest.warns(DeprecationWarning, match=r"pdalign\.constraint moved to pdalign\.contract"):
        from pdalign.constraint import RolloutConstraint as old  # noqa: PLC0415
    assert old is RolloutConstraint
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new paths warn about nothing
        assert get_class("pdalign.objectives.DPO") is DPO
        assert get_class("pdalign.iterative.PairAnswers").__module__ == "pdalign.iterative.judges"
    import pdalign.losses as moved  # noqa: PLC0415

    with pytest.raises(AttributeError, match=r"pdalign\.losses\.Nope: not found where "
                                             r"pdalign\.losses moved"):
        moved.Nope  # noqa: B018
