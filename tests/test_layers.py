"""The import layers (docs/architecture.md): ``__main__`` -> ``cli`` -> ``commands/`` -> the library.

Read from the source with ``ast``, every import counted wherever it sits (module level or inside a function,
relative or absolute), so a function-local import cannot hide a call back up.
"""
import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pimm_fast"
TOP = ("pimm_fast.__main__", "pimm_fast.cli", "pimm_fast.commands")  # the command layers; the rest is library


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = ("pimm_fast",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(path: Path, name: str, known) -> set[str]:
    """The pimm_fast modules that ``path`` (module ``name``) imports anywhere in its code. ``from X import y``
    counts X.y when that is a module, else X; a package's ``__init__`` run by importing one of its modules
    is Python's mechanics, not an edge."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in known else source)
    return {m for m in found if m in known}


@functools.lru_cache(maxsize=None)
def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(path, name, known) - {name} for name, path in known.items()}


def is_top(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in TOP)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_graph_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "pimm_fast"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("from .train import loop\n")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "loop.py").write_text("def f():\n    from ..cli import main\n    import pimm_fast.train\n")
    edges = graph(pkg)
    assert edges["pimm_fast.cli"] == {"pimm_fast.train.loop"}
    assert edges["pimm_fast.train.loop"] == {"pimm_fast.cli", "pimm_fast.train"}
    assert cycles(edges) == [["pimm_fast.cli", "pimm_fast.train.loop"]]


def test_the_command_layers_exist():
    names = modules()
    assert {"pimm_fast.__main__", "pimm_fast.cli", "pimm_fast.commands"} <= set(names)


@pytest.mark.parametrize("name", sorted(n for n in modules() if not is_top(n)))
def test_the_library_never_imports_the_command_layers(name):
    up = sorted(m for m in graph()[name] if is_top(m))
    assert not up, f"{name} (library) imports {up}: the command layers call the library, never the reverse"


def test_cli_never_imports_main_and_commands_never_import_cli():
    edges = graph()
    assert "pimm_fast.__main__" not in edges["pimm_fast.cli"]
    for name, targets in edges.items():
        if name.startswith("pimm_fast.commands"):
            assert not targets & {"pimm_fast.cli", "pimm_fast.__main__"}, f"{name} imports {targets}"


def test_no_import_cycles():
    assert cycles(graph()) == []
