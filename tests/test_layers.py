"""The layering of ARCHITECTURE.md, read from the source (imports inside functions included):

- ``core`` (with ``models`` and ``errors``) imports nothing else of the project;
- a stage package (sources, video, detect, annotate, verify, shards, audit) imports ``core`` and
  itself, never another stage, and never what stands in for the outside world (``dryrun``: the
  dry-run LLM server, the demo generator and its detector's training; ``testing``: test kits);
- no import cycle, between modules or between packages;
- no module imports another module's private (``_name``) names.

The checker is also run on a small made-up tree with each kind of violation, so it is known to
catch them.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sources", "video", "detect", "annotate", "verify", "shards", "audit")
#: ``storage`` (locations, media on object storage) is I/O at the edges that stages share, as
#: ``core/files.py`` is: it imports only core.
CORE_MODULES = ("models", "errors", "storage")
#: Beside the stages: stand-ins for the outside world and kits for tests (they may use stages).
STAND_INS = ("dryrun", "testing")


def module_names(root: Path, packages: tuple[str, ...], mapped: dict[str, str] | None = None) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the given top-level packages and of the
    packages ``mapped`` from another folder of ``root`` (pyproject's package-dir: the repository's
    flows/ is installed as ``stgr_builder.flows``)."""
    folders = {package: root / package for package in packages}
    folders.update({package: root / folder for package, folder in (mapped or {}).items()})
    found = {}
    for package, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            parts = package.split(".") + list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported project module, names taken from it) for every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # `from pkg import module`
                    out.append((sub, []))
                elif base in modules:
                    out.append((base, [alias.name]))
    return out


def layer(module: str, project: str) -> str:
    """``core``, a stage's name, ``stand-in`` (dryrun, testing) or ``compose`` (pipeline,
    executor, CLI, flows, ...)."""
    parts = module.split(".")
    if parts[0] != project:
        return "compose"
    if len(parts) == 1 or parts[1] in CORE_MODULES or parts[1] == "core":
        return "core"
    if parts[1] in STAND_INS:
        return "stand-in"
    return parts[1] if parts[1] in STAGES else "compose"


def unit(module: str, project: str) -> str:
    """The package-level node of a module: its stage, ``core``, or the module itself."""
    kind = layer(module, project)
    return module if kind in ("compose", "stand-in") else kind


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as a list of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def violations(root: Path, project: str, mapped: dict[str, str] | None = None) -> list[str]:
    modules = module_names(root, (project,), mapped)
    problems = []
    module_graph: dict[str, set[str]] = {m: set() for m in modules}
    unit_graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for target, names in imports_of(name, path, modules):
            if target == name:
                continue
            module_graph[name].add(target)
            src, dst = layer(name, project), layer(target, project)
            if src == "core" and dst != "core":
                problems.append(f"core module {name} imports {target} ({dst})")
            elif src in STAGES and dst not in ("core", src):
                problems.append(f"stage {src}: {name} imports {target} ({dst})")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                problems.append(f"{name} imports private {', '.join(private)} from {target}")
            a, b = unit(name, project), unit(target, project)
            if a != b:
                unit_graph.setdefault(a, set()).add(b)
    for graph, what in ((module_graph, "module"), (unit_graph, "package")):
        cycle = find_cycle(graph)
        if cycle:
            problems.append(f"{what} import cycle: {' -> '.join(cycle)}")
    return problems


def package_dirs() -> dict[str, str]:
    """The packages a wheel installs from other folders than their dotted name (pyproject.toml)."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["tool"]["setuptools"]["package-dir"]


def test_the_project_keeps_its_layers():
    mapped = package_dirs()
    assert "stgr_builder.flows.build" in module_names(ROOT, ("stgr_builder",), mapped)  # the flows are read too
    assert violations(ROOT, "stgr_builder", mapped) == []


def test_a_mapped_package_is_checked_under_its_installed_name(tmp_path):
    """flows/ at the top is installed as ``p.flows``: a stage importing it is caught only when the
    checker reads the folder under that name."""
    files = {
        "p/__init__.py": "",
        "p/video/__init__.py": "from p.flows import build\n",
        "flows/__init__.py": "",
        "flows/build.py": "def run():\n    pass\n",
    }
    _write(tmp_path, files)
    assert violations(tmp_path, "p") == []
    assert violations(tmp_path, "p", {"p.flows": "flows"}) == ["stage video: p.video imports p.flows.build (compose)"]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    "files, expected",
    [
        (
            {"p/detect/base.py": "def f():\n    from p.video import steps\n"},
            "stage detect: p.detect.base imports p.video.steps",
        ),
        ({"p/core/grammar.py": "from p.annotate import llm\n"}, "core module p.core.grammar imports p.annotate.llm"),
        (
            {"p/pipeline.py": "from p.executor import run\n", "p/executor.py": "import p.pipeline\n"},
            "module import cycle",
        ),
        ({"p/video/steps.py": "from p.video.plan import _index_at\n"}, "imports private _index_at"),
        (
            {"p/sources/demo.py": "from p.dryrun.demo import generate_demo\n"},
            "stage sources: p.sources.demo imports p.dryrun.demo (stand-in)",
        ),
        ({"p/annotate/llm.py": "def f():\n    import p.testing.kit\n"}, "imports p.testing.kit (stand-in)"),
        ({"p/core/__init__.py": "from p.dryrun import server\n"}, "core module p.core imports p.dryrun.server"),
    ],
)
def test_the_checker_catches_each_kind_of_violation(tmp_path, files, expected):
    base = {
        "p/__init__.py": "",
        "p/core/__init__.py": "",
        "p/models.py": "",
        "p/video/__init__.py": "",
        "p/video/steps.py": "",
        "p/video/plan.py": "def _index_at():\n    pass\n",
        "p/annotate/__init__.py": "",
        "p/annotate/llm.py": "",
        "p/detect/__init__.py": "",
        "p/pipeline.py": "",
        "p/executor.py": "",
        "p/sources/__init__.py": "",
        "p/sources/demo.py": "",
        "p/dryrun/__init__.py": "",
        "p/dryrun/server.py": "",
        "p/dryrun/demo/__init__.py": "def generate_demo():\n    pass\n",
        "p/testing/__init__.py": "",
        "p/testing/kit.py": "",
    }
    _write(tmp_path / "clean", base)
    assert violations(tmp_path / "clean", "p") == []
    _write(tmp_path / "broken", {**base, **files})
    found = violations(tmp_path / "broken", "p")
    assert any(expected in problem for problem in found), found
