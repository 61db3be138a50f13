"""The package's layers (docs/architecture.md): each folder imports only from folders
before it, and no module-level import cycle exists. Imports inside functions count (they
run); imports under ``if TYPE_CHECKING:`` do not."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import presetdb

PACKAGE = Path(presetdb.__file__).parent
# Lower rank first. A module may import from its own folder and from lower ranks.
RANKS = {
    "errors": 0, "settings": 0, "keys": 0, "_util": 0, "_text": 0,
    "store": 1,
    "runtime": 2,
    "helion": 3,
    "kernels": 4,
    "offline": 5, "audit": 5,
    "cli": 6,
}
FACADE = {"presetdb", "presetdb.__main__"}  # the public API re-exports lazily; the entry point


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported presetdb module, line, at module level) for every import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, top) for a in child.names if a.name.startswith("presetdb"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""  # the package uses absolute imports only (ruff: TID252)
                if not child.level and base.startswith("presetdb"):
                    for alias in child.names:
                        candidate = f"{base}.{alias.name}"
                        found.append((candidate if _exists(candidate) else base, child.lineno, top))
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top and not nested)

    visit(tree, True)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_folder_imports_a_later_folder() -> None:
    wrong = []
    for module, path in sorted(_all_modules().items()):
        if module in FACADE:
            continue
        mine = _folder(module)
        for target, line, _ in _imports(path, module):
            theirs = _folder(target)
            if theirs is None or theirs == mine or mine is None:
                continue
            if theirs not in RANKS or mine not in RANKS:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target} (folder not in the layer map)")
            elif RANKS[theirs] > RANKS[mine] or (RANKS[theirs] == RANKS[mine] and RANKS[mine] > 0):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {mine} imports {target}")
    assert not wrong, "imports against the layer order (docs/architecture.md):\n" + "\n".join(wrong)


def test_no_module_level_import_cycle() -> None:
    modules = _all_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for target, _, top in _imports(path, module):
            if top and target in modules and target != module:
                graph[module].add(target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(modules):
        if node not in state:
            dfs(node)
    # A package importing its own submodules in __init__ is not a cycle of behaviour.
    real = [c for c in cycles if not all(m.startswith(c[0]) or c[0].startswith(m) for m in c)]
    assert not real, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


def test_the_runtime_and_store_never_import_torch_or_helion() -> None:
    heavy = ("torch", "helion", "triton")
    wrong = []
    for module, path in _all_modules().items():
        if _folder(module) not in ("store", "runtime") and module not in ("presetdb.errors", "presetdb.settings", "presetdb.keys"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            wrong += [f"{module}:{node.lineno}: {n}" for n in names if n.split(".")[0] in heavy]
    assert not wrong, "torch/helion/triton imported below presetdb.helion:\n" + "\n".join(wrong)
