"""No import cycles among the modules of src/lgm, read statically from their source.

What counts as an edge A -> B (A's source names module B of lgm):

- every ``import lgm.x`` and ``from lgm.x import y`` / ``from .x import y``, where
  it stands: at the top of the module, inside a function (a lazy import), under
  ``if TYPE_CHECKING`` or in a module ``__getattr__``. Lazy imports count: they
  only move a cycle from import time to call time, and the layering they
  break (a low module reaching up into the loop) is the same; issue 20 listed
  lazy ones among the cycles to break.
- ``from lgm.x import y`` points at ``lgm.x.y`` when that is a module, else at ``lgm.x``.

What does not: the implicit import of parent packages (importing ``lgm.a.b``
also runs ``lgm/__init__.py`` and ``lgm/a/__init__.py``). A package's
``__init__`` that imports its own children is the ordinary layout, and
counting those edges would make every such package cyclic. An explicit
``from lgm.a import name`` in a child of ``lgm.a`` does count, as above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def lgm_modules(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every .py file under src/lgm."""
    mods = {}
    for path in sorted((src / "lgm").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _owner(name: str, mods: dict) -> str | None:
    """The lgm module a dotted name refers to (itself, or the nearest enclosing module)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(mods: dict[str, tuple[Path, bool]], src: Path = SRC) -> dict[str, dict[str, str]]:
    """module -> {imported lgm module: "file:line" of the first import of it (relative to ``src``)}."""
    edges: dict[str, dict[str, str]] = {}
    for mod, (path, is_pkg) in mods.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        out = edges.setdefault(mod, {})
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in mods else source for a in node.names]
            else:
                continue
            for target in targets:
                if target != "lgm" and not target.startswith("lgm."):
                    continue
                owner = _owner(target, mods)
                if owner is not None and owner != mod:
                    out.setdefault(owner, f"{path.relative_to(src)}:{node.lineno}")
    return edges


def find_cycle(edges: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS, three colours)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for root in sorted(edges):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(edges.get(root, {})))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, {}))))
    return None


def describe(cycle: list[str], edges: dict[str, dict[str, str]]) -> str:
    return "\n".join(f"  {a} -> {b}  ({edges[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_no_import_cycles_among_lgm_modules():
    mods = lgm_modules()
    assert "lgm.distillation" in mods and "lgm.backbones" in mods, f"no lgm sources under {SRC}"
    edges = import_edges(mods)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle among src/lgm modules:\n" + describe(cycle, edges)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_walker_finds_top_level_lazy_and_relative_cycles(tmp_path):
    # The walker itself must be able to fail: a lazy cycle through a relative import, and a top-level one.
    src = _write(tmp_path / "src", {
        "lgm/__init__.py": "",
        "lgm/low.py": "def f():\n    from .pkg.high import g\n    return g\n",
        "lgm/pkg/__init__.py": "",
        "lgm/pkg/high.py": "from lgm import low\n",
        "lgm/a.py": "import lgm.b as b\n",
        "lgm/b.py": "from lgm.a import x\n",
        "lgm/ok.py": "import lgm.low\nimport os\n",
    })
    mods = lgm_modules(src)
    edges = import_edges(mods, src)
    assert set(edges["lgm.low"]) == {"lgm.pkg.high"} and set(edges["lgm.pkg.high"]) == {"lgm.low"}
    assert find_cycle({k: v for k, v in edges.items() if k in ("lgm.low", "lgm.pkg.high")}) in (
        ["lgm.low", "lgm.pkg.high", "lgm.low"], ["lgm.pkg.high", "lgm.low", "lgm.pkg.high"])
    cycle = find_cycle(edges)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 3
    del edges["lgm.b"]["lgm.a"], edges["lgm.pkg.high"]["lgm.low"]
    assert find_cycle(edges) is None


@pytest.mark.parametrize("old, name, new", [
    ("lgm.distillation", "resolve_device", "lgm.devices"),
    ("lgm.distillation", "autocast_context", "lgm.devices"),
    ("lgm.distillation", "synthetic_backward", "lgm.synthetic_side"),
    ("lgm.distillation", "real_batch_size", "lgm.real_side"),
    ("lgm.distillation", "build_real_side", "lgm.real_side"),
    ("lgm.baselines", "random_indices", "lgm.selection"),
    ("lgm.baselines", "centroid_indices", "lgm.selection"),
])
def test_moved_names_still_import_from_their_old_module_with_a_warning(old, name, new):
    import importlib

    with pytest.warns(DeprecationWarning, match=f"{old}.{name} has moved to {new}.{name}"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_a_renamed_class_warns_with_its_new_name_and_is_that_class():
    import lgm.joint
    import lgm.real_side

    with pytest.warns(DeprecationWarning, match=r"lgm.joint.JointReal has moved to lgm.real_side.RealSide"):
        value = lgm.joint.JointReal
    assert value is lgm.real_side.RealSide


def test_an_unknown_name_is_still_an_attribute_error():
    import lgm.distillation

    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        lgm.distillation.no_such_name  # noqa: B018
