"""The digest of the code a stage runs: part of the keys of its stored results, so a result is
reused only while the code that made it would make it again, with no version number to bump.

What is hashed is each module's syntax tree without its docstrings (comments, docstrings and
formatting never count), named by its dotted name (never a path, a time or a Python version's
own spelling of the tree), for every module of the given packages and every ``stgr_builder``
module they import, at any depth, transitively (``core`` and ``models`` included). Prefect's
task caching keys on a task's source for the same reason.

>>> len(code_digest("stgr_builder.annotate"))
64
>>> code_digest("stgr_builder.annotate") == code_digest("stgr_builder.detect")
False
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import threading
from pathlib import Path
from typing import Any

from stgr_builder.core.hashing import digest, sha256_bytes

PROJECT = "stgr_builder"
_PARSE_LOCK = threading.Lock()  # guards ast.parse only; holds no state


@functools.cache
def code_digest(*names: str) -> str:
    """Digest of the normalized source of the named packages (all their modules) or modules
    and of every project module they import, transitively. Computed once per process."""
    sources = code_modules(*names)
    return digest(sorted((name, _module_facts(name, path)[0]) for name, path in sources.items()))


def module_digest(source: str) -> str:
    """Digest of a module's code: its syntax tree, less docstrings and positions.

    >>> module_digest("x = 1  # one") == module_digest("'Doc.'\\nx = (1)")
    True
    >>> module_digest("x = 1") == module_digest("x = 2")
    False
    """
    return _tree_digest(_parse(source))


@functools.cache
def _module_facts(name: str, path: Path) -> tuple[str, tuple[str, ...]]:
    """(digest, project modules imported) of one module file: read and parsed once per process."""
    tree = _parse(path.read_text(encoding="utf-8"))
    imports = tuple(_project_imports(name, path, tree))  # before the docstrings go: the tree is edited
    return _tree_digest(tree), imports


def _parse(source: str) -> ast.Module:
    # One parse at a time: Python 3.11's parser keeps its recursion depth in state shared by
    # threads, and two parses at once can fail with "SystemError: AST constructor recursion depth
    # mismatch" (CPython gh-106905); shard tasks on threads build their steps at the same time
    # (seen in tests/test_dask.py). A parse by another library's thread can still collide: once more.
    with _PARSE_LOCK:
        try:
            return ast.parse(source)
        except SystemError:
            return ast.parse(source)


def _tree_digest(tree: ast.Module) -> str:
    text: list[str] = []
    _canonical(_without_docstrings(tree), text)
    return sha256_bytes("".join(text).encode("utf-8"))


class _WithoutDocstrings(ast.NodeTransformer):
    """Drops every statement that is a bare string: docstrings, and strings used as comments
    (a statement that evaluates a constant does nothing)."""

    def visit_Expr(self, node: ast.Expr) -> ast.Expr | None:
        return None if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) else node


def _without_docstrings(tree: ast.Module) -> ast.AST:
    stripped: ast.AST = _WithoutDocstrings().visit(tree)
    return stripped


def _canonical(node: Any, out: list[str]) -> None:
    """Writes a syntax tree as text: each node's type and set fields. Fields a newer Python adds
    with an empty default (``type_params=[]``) are left out, so their spelling does not count."""
    if isinstance(node, ast.AST):
        out.append(type(node).__name__ + "(")
        for name, value in ast.iter_fields(node):
            if value is not None and value != []:
                out.append(name + "=")
                _canonical(value, out)
                out.append(",")
        out.append(")")
    elif isinstance(node, list):
        out.append("[")
        for item in node:
            _canonical(item, out)
            out.append(",")
        out.append("]")
    else:
        out.append(repr(node))  # a name or a constant: repr quotes strings, tells 1 from 1.0 and True


def code_modules(*names: str) -> dict[str, Path]:
    """Dotted name -> source file of the named packages' modules and of all they import.

    >>> sorted(code_modules("stgr_builder.core.hashing"))
    ['stgr_builder', 'stgr_builder.core', 'stgr_builder.core.hashing']
    """
    found: dict[str, Path] = {}
    todo = [module for name in names for module in [*_modules_of(name), *_with_parents(name)]]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _source_of(name)
        if path is None:
            continue
        found[name] = path
        todo += _module_facts(name, path)[1]
    return found


def _modules_of(name: str) -> list[str]:
    """A package's own modules (its subpackages' too), or the module itself."""
    found = _source_of(name)
    if found is None or found.name != "__init__.py":
        return [name]
    modules = [name]
    for path in sorted(found.parent.rglob("*.py")):
        parts = list(path.relative_to(found.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules.append(".".join([name, *parts]))
    return modules


def _source_of(name: str) -> Path | None:
    """The .py file of a project module, found in the project package's search path without
    importing anything; None for a name that is not a module (``from m import f``)."""
    top, *parts = name.split(".")
    if top != PROJECT:
        return None
    for folder in _project_path():
        base = folder.joinpath(*parts)
        for candidate in [base / "__init__.py", *([base.with_suffix(".py")] if parts else [])]:
            if candidate.is_file():
                return candidate
    return None


def _project_path() -> list[Path]:
    """Where the project's modules are: its package folder, and in a source checkout the
    repository's top (flows/ is ``stgr_builder.flows``: stgr_builder/__init__.py)."""
    spec = importlib.util.find_spec(PROJECT)
    return [Path(folder) for folder in (spec.submodule_search_locations or [])] if spec is not None else []


def _project_imports(name: str, path: Path, tree: ast.Module) -> list[str]:
    """Project modules a module imports, anywhere in it, with the packages above them (importing
    ``a.b.c`` runs ``a`` and ``a.b`` first). A ``from m import x`` lists ``m.x`` and ``m``:
    whichever is not a module is dropped by ``_source_of``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    project = [target for target in targets if target == PROJECT or target.startswith(PROJECT + ".")]
    return [module for target in project for module in _with_parents(target)]


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs the packages above it first."""
    parts = name.split(".")
    return [".".join(parts[: depth + 1]) for depth in range(len(parts))]
