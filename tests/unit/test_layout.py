"""The layout keeps its promises: imports only run downward and modules stay readable.

Function-level imports count: hiding an import inside a function does not make a cycle
go away, it only makes it fail later.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "endpoints"
MAX_MODULE_LINES = 500
MAX_TOP_LEVEL_MODULES = 10


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every ``endpoints`` module that ``name`` imports, at any depth of its code."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[: len(package) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(
            c for c in candidates if c in known and c != name and not name.startswith(c + ".")
        )
    return found


@cache
def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that starts and ends at the same module, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph[node]):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_find_cycle_sees_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_count_function_level_and_relative_imports(tmp_path: Path):
    module = tmp_path / "mod.py"
    module.write_text("def f():\n    from . import tasks\n    from .kv import x\n")
    known = {"endpoints.tasks", "endpoints.kv", "endpoints.mod"}
    assert _imports("endpoints.mod", module, known) == {"endpoints.tasks", "endpoints.kv"}


def test_endpoints_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


# (lower, upper): nothing in ``lower`` imports ``upper``. Arrows run downward: web, api and
# admin -> services and selectors -> models and the registry; provisioning -> runtime,
# registry, models; gateway -> its routing snapshot -> models (never the registry or
# provisioning); telemetry sits beside the models, below everything that reports or reads.
LAYERS = [
    ("endpoints.models", "endpoints.services"),
    ("endpoints.models", "endpoints.selectors"),
    ("endpoints.models", "endpoints.telemetry"),
    ("endpoints.registry", "endpoints.models"),
    ("endpoints.registry", "endpoints.provisioning"),
    ("endpoints.selectors", "endpoints.services"),
    ("endpoints.selectors", "endpoints.web"),
    ("endpoints.selectors", "endpoints.api"),
    ("endpoints.services", "endpoints.web"),
    ("endpoints.services", "endpoints.api"),
    ("endpoints.services", "endpoints.provisioning"),
    ("endpoints.services", "endpoints.gateway"),
    ("endpoints.services", "endpoints.tasks"),
    ("endpoints.gateway", "endpoints.registry"),
    ("endpoints.gateway", "endpoints.provisioning"),
    ("endpoints.gateway", "endpoints.services"),
    ("endpoints.gateway", "endpoints.selectors"),
    ("endpoints.gateway", "endpoints.web"),
    ("endpoints.gateway", "endpoints.api"),
    ("endpoints.gateway", "endpoints.tasks"),
    ("endpoints.provisioning", "endpoints.web"),
    ("endpoints.provisioning", "endpoints.api"),
    ("endpoints.provisioning", "endpoints.services"),
    ("endpoints.provisioning", "endpoints.gateway"),
    ("endpoints.provisioning", "endpoints.tasks"),
    ("endpoints.runtime", "endpoints.provisioning"),
    ("endpoints.telemetry", "endpoints.services"),
    ("endpoints.telemetry", "endpoints.selectors"),
    ("endpoints.telemetry", "endpoints.gateway"),
    ("endpoints.telemetry", "endpoints.provisioning"),
    ("endpoints.telemetry", "endpoints.registry"),
    ("endpoints.telemetry", "endpoints.web"),
    ("endpoints.telemetry", "endpoints.api"),
    ("endpoints.telemetry", "endpoints.tasks"),
]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize(("lower", "upper"), LAYERS)
def test_lower_layers_do_not_import_upper_ones(lower: str, upper: str):
    graph = import_graph()
    offenders = {
        (module, target)
        for module, targets in graph.items()
        if _within(module, lower)
        for target in targets
        if _within(target, upper)
    }
    assert offenders == set()


# Development tools and benchmarks: only management commands (their entry points) and the
# benchmarks themselves import them; the benchmarks use the development tools, not the reverse.
TOOLS = {
    "endpoints.dev": ("endpoints.management", "endpoints.bench"),
    "endpoints.bench": ("endpoints.management",),
}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_only_management_commands_import_the_development_tools(tool: str):
    allowed = (tool, *TOOLS[tool])
    offenders = {
        (module, target)
        for module, targets in import_graph().items()
        if not any(_within(module, package) for package in allowed)
        for target in targets
        if _within(target, tool)
    }
    assert offenders == set()


def test_the_runtime_imports_nothing_of_the_product_but_itself():
    """A replica's sandbox holds ``endpoints/runtime/`` only of the product's code (no
    settings, no models): a runtime module that imported anything else could not start
    a replica."""
    outside = {
        (module, target)
        for module, targets in import_graph().items()
        if _within(module, "endpoints.runtime")
        for target in targets
        if not _within(target, "endpoints.runtime")
    }
    assert outside == set()


def test_endpoints_itself_holds_at_most_ten_modules():
    """The package's top level is the shared ground floor; everything else lives in the
    package of its group."""
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_module_is_over_the_line_limit():
    long = {
        str(path.relative_to(ROOT)): n
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def _imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


def test_the_deployments_plugin_needs_only_mlflow_on_a_client_machine():
    """The plugin runs in MLflow users' own environments: no Django, no other product
    module (only its own package)."""
    graph = import_graph()
    plugin = "endpoints.deployments"
    outside = {
        (module, target)
        for module, targets in graph.items()
        if module == plugin or module.startswith(plugin + ".")
        for target in targets
        if not (target == plugin or target.startswith(plugin + "."))
    }
    assert outside == set()
    for path in (PACKAGE / "deployments").glob("*.py"):
        assert not {"django", "rest_framework", "celery", "serving_ui"} & (
            _imported_top_level_names(path)
        ), path


def _documented_modules(doc: str) -> dict[str, list[str]]:
    """{folder: module file names} of the ``endpoints/`` tree in docs/architecture.md's
    layout block: a folder is a name ending in ``/`` in the name column (before column 25,
    indented two spaces per level), and every ``*.py`` named on its lines belongs to the
    folder of the name column above it."""
    block = doc[doc.index("## The layout") :].split("```")[1]
    listed: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("──"):
            continue
        indent = len(line) - len(line.lstrip())
        first = line.split()[0]
        if indent == 0:
            stack = [(0, "endpoints")] if first == "endpoints/" else []
            continue
        if not stack:
            continue
        text = line
        if indent < 25:
            while stack[-1][0] >= indent:
                stack.pop()
            if first.endswith("/"):
                stack.append((indent, f"{stack[-1][1]}/{first.rstrip('/')}"))
                text = line[indent + len(first) :]
        for name in re.findall(r"(?<![\w/.])(\w+\.py)\b", text):
            listed.setdefault(stack[-1][1], []).append(name)
    return listed


def test_the_architecture_doc_lists_every_module_once_in_its_folder():
    listed = _documented_modules((ROOT / "docs" / "architecture.md").read_text())
    actual: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        actual.setdefault(str(path.parent.relative_to(ROOT)), []).append(path.name)
    assert {folder: sorted(names) for folder, names in listed.items()} == actual


# --- the tests' own layout -----------------------------------------------------------------------

TESTS = ROOT / "tests"


def _imported_modules(path: Path) -> set[str]:
    """The names a module imports, each as written (``conftest``, ``.test_x``, ``a.b.c``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            names.update(f"{base.rstrip('.')}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_tests_import_helpers_from_modules_never_from_a_conftest_or_a_test_module():
    """A conftest imported as a module is a second copy of it (its state apart from the one
    pytest loaded), and a test module imported by another runs its fixtures twice: shared
    helpers belong in ``tests/support``."""
    offenders = {
        (str(path.relative_to(ROOT)), name)
        for path in TESTS.rglob("*.py")
        for name in _imported_modules(path)
        if {"conftest"} & set(name.split(".")) or re.search(r"(^|\.)test_\w+$", name)
    }
    assert offenders == set()


def test_conftest_files_define_only_fixtures_and_hooks():
    offenders = []
    for path in TESTS.rglob("conftest.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                offenders.append(f"{path.relative_to(ROOT)}: class {node.name}")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                fixture = any(
                    ast.unparse(d).startswith("pytest.fixture") for d in node.decorator_list
                )
                if not (fixture or node.name.startswith("pytest_")):
                    offenders.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert offenders == []


def test_unit_and_integration_tests_mirror_the_packages():
    """``tests/unit/<package>/`` and ``tests/integration/<package>/`` name a package of
    ``endpoints`` (or ``serving_ui``, or the tests' own ``support``); no test module sits at
    the top of ``tests/``."""
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {"serving_ui", "support"}
    for level in ("unit", "integration"):
        folders = {p.name for p in (TESTS / level).iterdir() if p.is_dir() and p.name[0] != "_"}
        assert folders <= packages, (level, folders - packages)
    assert sorted(p.name for p in TESTS.glob("test_*.py")) == []
