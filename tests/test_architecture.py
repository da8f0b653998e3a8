"""The shape of the code, checked like any other behaviour.

- `lint-imports` (import-linter, contracts in .importlinter): the layers entry points >
  services > matcher > row plumbing and queueing > pure code and models; order services never
  call into the matcher; the engine imports no app module; no cycles among an app's modules.
- No import cycle between any two modules of the project (grimp's graph, the one import-linter
  builds, searched for strongly connected components): imports inside functions count too.
- No module imports another module's `_private` names, neither `from x import _y` nor
  `x._y` on an imported project module (tests included: what a test needs is public).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "marketplace", "metering", "pricing")
CHECKED_DIRS = (*PACKAGES, "tests", "bench")


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--config", str(ROOT / ".importlinter")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    adj = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    # Tarjan's algorithm, iterative (no recursion limit on a deep graph).
    for root in adj:
        if root in index:
            continue
        work = [(root, iter(adj[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(adj.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_two_modules_import_each_other_even_indirectly():
    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    # A package's __init__ importing its own submodules is not a design cycle; there are none
    # today, but the check keeps to modules that hold code.
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(m)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]


def _project_modules() -> set[str]:
    mods = set()
    for d in CHECKED_DIRS:
        for path in (ROOT / d).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods.add(".".join(parts))
    return mods


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, module: str | None, level: int) -> str:
    if not level:
        return module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(path: Path, modules: set[str], current: str | None = None) -> list[str]:
    """`from x import _y` and `x._y` (x an imported project module) in one file."""
    current = current or _module_name(path)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(current, path.name == "__init__.py", node.module, node.level)
            if source.split(".")[0] not in {m.split(".")[0] for m in modules}:
                continue
            for a in node.names:
                if _is_private(a.name) and source != current:
                    found.append(f"{shown}:{node.lineno} from {source} import {a.name}")
                if f"{source}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id] != current
            and _is_private(node.attr)
        ):
            found.append(f"{shown}:{node.lineno} {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    modules = _project_modules()
    found = []
    for d in CHECKED_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            if "migrations" not in path.parts:
                found += private_imports(path, modules)
    assert found == []


def test_the_private_name_check_finds_both_forms(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from pricing.matcher import _hidden\nfrom . import matcher\nimport pricing.book_rows as rows\n"
        "x = matcher._secret + rows._other + matcher.__name__\n"
    )
    found = private_imports(sample, _project_modules(), current="pricing.sample")
    assert [f.split(" ", 1)[1] for f in found] == [
        "from pricing.matcher import _hidden",
        "pricing.matcher._secret",
        "pricing.book_rows._other",
    ]
