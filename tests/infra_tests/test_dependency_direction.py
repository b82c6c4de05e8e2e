"""Layering inside the ``nasvit`` namespace, and an import graph without cycles.

Bottom to top: leaves (errors, settings, sql, data, onnx_export, guarantees, agent) -> nn ->
search_spaces and latency_db -> evaluation -> training -> searching (controllers below the
pipeline) -> api -> cli and server. CONTRIBUTING.md explains the layers.

An AST scan over the source folders, with module names derived from pyproject's package-dir
mapping. import-linter cannot do this: it walks the filesystem from ``nasvit.__file__`` and never
sees the folders mapped onto ``nasvit.search_spaces``, ``nasvit.latency_db`` and ``nasvit.server``.
Every import counts, including lazy ones inside functions and ``if TYPE_CHECKING:`` blocks.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from nasvit_testing.layout import REPO_ROOT, source_files


@dataclass(frozen=True)
class Rule:
    """What the modules of one package may import from the ``nasvit`` namespace.

    Attributes:
        package: the rule covers this package and everything under it.
        allowed: if set, the only ``nasvit.*`` prefixes these modules may import.
        forbidden: ``nasvit.*`` prefixes these modules must not import.
        exempt: modules (prefixes) inside ``package`` that the rule skips.
        why: shown with each violation.
    """

    package: str
    why: str
    allowed: tuple[str, ...] | None = None
    forbidden: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()


#: The leaves of ``nasvit/``: small modules every layer may use.
LEAVES = (
    "nasvit.errors",
    "nasvit.settings",
    "nasvit.sql",
    "nasvit.data",
    "nasvit.onnx_export",
    "nasvit.guarantees",
    "nasvit.agent",
)
_BELOW_EVALUATION = (*LEAVES, "nasvit.nn", "nasvit.search_spaces", "nasvit.latency_db")

#: Most specific package first: an import breaking several rules is reported once, by the first.
#: Bottom to top: leaves -> nn -> search_spaces, latency_db -> evaluation -> training -> searching
#: (controllers below the rest of search) -> api -> cli, server.
RULES: tuple[Rule, ...] = (
    Rule(
        package="nasvit.nn",
        allowed=("nasvit.nn",),
        why="elastic ops are the bottom layer and import no other part of nasvit",
    ),
    Rule(
        package="nasvit.search_spaces",
        allowed=("nasvit.nn", "nasvit.search_spaces", "nasvit.errors"),
        why="a search space builds on nasvit.nn only; pipeline, latency_db and server sit above",
    ),
    Rule(
        package="nasvit.latency_db",
        allowed=(
            "nasvit.nn",
            "nasvit.latency_db",
            "nasvit.errors",
            "nasvit.settings",
            "nasvit.sql",
            "nasvit.guarantees",
            "nasvit.agent",
        ),
        why="latency_db knows blocks only through nasvit.nn.blocks; no search space, no server",
    ),
    Rule(package="nasvit.errors", allowed=(), why="errors is a leaf: everything imports it"),
    Rule(
        package="nasvit.agent",
        allowed=("nasvit.agent",),
        why="the device agent runs alone on a device (served as one zipapp): nothing else of "
        "nasvit travels with it",
    ),
    Rule(
        package="nasvit.guarantees",
        allowed=("nasvit.errors",),
        why="guarantees is a leaf: the import-light request and the latency tables share it",
    ),
    Rule(
        package="nasvit.settings",
        allowed=("nasvit.errors",),
        why="settings is a leaf, read by every layer",
    ),
    Rule(
        package="nasvit.sql",
        allowed=("nasvit.errors", "nasvit.settings"),
        why="the SQL plumbing is a leaf shared by the latency store, trial store and service",
    ),
    Rule(package="nasvit.data", allowed=("nasvit.errors",), why="datasets are a leaf"),
    Rule(
        package="nasvit.onnx_export",
        allowed=("nasvit.errors", "nasvit.latency_db", "nasvit.agent"),
        why="ONNX export is a leaf over the profilers' exporter",
    ),
    Rule(
        package="nasvit.evaluation",
        allowed=(*_BELOW_EVALUATION, "nasvit.evaluation"),
        why="evaluation (accuracy and latency of a subnet) sits below training and search",
    ),
    Rule(
        package="nasvit.training",
        allowed=(*_BELOW_EVALUATION, "nasvit.evaluation", "nasvit.training"),
        why="training uses evaluation; search, the API, the CLI and the service sit above it",
    ),
    Rule(
        package="nasvit.searching.controllers",
        allowed=(
            *LEAVES,
            "nasvit.nn",
            "nasvit.search_spaces",
            "nasvit.searching.controllers",
            "nasvit.searching.pareto",
            "nasvit.searching.adapters",
        ),
        why="a controller only proposes architectures: it knows the space, Pareto tools and "
        "adapters, never the pipeline, executors or stores",
    ),
    Rule(
        package="nasvit.searching",
        allowed=(*_BELOW_EVALUATION, "nasvit.evaluation", "nasvit.training", "nasvit.searching"),
        why="search sits below the Python API, the CLI and the service",
    ),
    Rule(
        package="nasvit.api",
        forbidden=("nasvit.cli", "nasvit.server"),
        why="the Python API sits below the CLI and the service",
    ),
    Rule(
        package="nasvit.server",
        forbidden=("nasvit.cli",),
        why="the service and the CLI are peers: neither imports the other's commands",
    ),
    Rule(
        package="nasvit",
        forbidden=("nasvit.server",),
        exempt=("nasvit.server", "nasvit.cli"),
        why="only the service and the CLI (`nasvit serve`) may import nasvit.server",
    ),
)


@dataclass(frozen=True)
class Violation:
    location: str
    imported: str
    rule: Rule

    def __str__(self) -> str:
        return f"{self.location}: imports {self.imported} ({self.rule.why})"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[tuple[int, str]]:
    """(line, absolute dotted name) for every import in ``tree``.

    ``from a import b`` yields ``a.b``: ``b`` may be a submodule, and a prefix rule treats an
    attribute of ``a`` the same as ``a`` itself.
    """
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package_parts) - 1:
                    raise ValueError(f"{module}:{node.lineno}: relative import beyond top level")
                base = package_parts[: len(package_parts) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                yield node.lineno, f"{origin}.{alias.name}"


def violations_in(
    module: str, is_package: bool, location: str, source: str, rules: Iterable[Rule] = RULES
) -> list[Violation]:
    tree = ast.parse(source, filename=location)
    applicable = [
        rule
        for rule in rules
        if _within(module, rule.package)
        and not any(_within(module, exempt) for exempt in rule.exempt)
    ]
    found = []
    for line, name in imported_names(tree, module, is_package):
        if not _within(name, "nasvit"):
            continue
        for rule in applicable:
            not_allowed = rule.allowed is not None and not any(
                _within(name, prefix) for prefix in rule.allowed
            )
            if not_allowed or any(_within(name, prefix) for prefix in rule.forbidden):
                found.append(Violation(f"{location}:{line}", name, rule))
                break  # one report per import, from the most specific rule (RULES order)
    return found


def test_every_package_respects_the_dependency_direction() -> None:
    files = [source for source in source_files() if source.module is not None]
    assert any(source.module == "nasvit.nn.blocks" for source in files), "scan found no sources"
    violations = [
        str(violation)
        for source in files
        for violation in violations_in(
            source.module,
            source.is_package,
            str(source.path.relative_to(REPO_ROOT)),
            source.path.read_text(encoding="utf-8"),
        )
    ]
    assert not violations, "dependency direction broken:\n" + "\n".join(violations)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        pytest.param(
            "nasvit.latency_db.store",
            "from ..search_spaces import core\n"
            "from nasvit.nn.blocks import BlockSpec\n"
            "from . import keys\n"
            "def later():\n"
            "    import nasvit.server.app\n",
            [("nasvit.search_spaces.core", 1), ("nasvit.server.app", 5)],
            id="latency_db-relative-and-lazy",
        ),
        pytest.param(
            "nasvit.nn.ops",
            "import torch\nfrom nasvit.errors import NasvitError\nfrom .blocks import BlockSpec\n",
            [("nasvit.errors.NasvitError", 2)],
            id="nn-imports-only-nn",
        ),
        pytest.param(
            "nasvit.search_spaces.efficientformer",
            "from nasvit.errors import UnknownNameError\n"
            "from ..nn.blocks import BlockSpec\n"
            "from nasvit.searching.pipeline import run\n"
            "from nasvit import latency_db\n",
            [("nasvit.searching.pipeline.run", 3), ("nasvit.latency_db", 4)],
            id="search_spaces-no-pipeline-no-latency_db",
        ),
        pytest.param(
            "nasvit.searching.pipeline",
            "from nasvit.search_spaces import get_space\n"
            "from nasvit.server.app import create_app\n",
            [("nasvit.server.app.create_app", 2)],
            id="pipeline-must-not-import-server",
        ),
        pytest.param(
            "nasvit.cli",
            "from nasvit.server.app import create_app\n",
            [],
            id="cli-may-import-server",
        ),
        pytest.param(
            "nasvit.server.routes.jobs",
            "from ...pipeline import run\nfrom ..schemas import JobRead\n",
            [],
            id="server-may-import-everything",
        ),
    ],
)
def test_checker_flags_exactly_the_forbidden_imports(
    module: str, source: str, expected: list[tuple[str, int]]
) -> None:
    found = violations_in(module, False, "synthetic.py", source)
    assert sorted((v.imported, int(v.location.rsplit(":", 1)[1])) for v in found) == sorted(
        expected
    )


def test_checker_resolves_relative_imports_from_a_package_init() -> None:
    found = violations_in("nasvit.latency_db", True, "__init__.py", "from .. import server\n")
    assert [v.imported for v in found] == ["nasvit.server"]


def test_relative_import_beyond_the_top_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="beyond top level"):
        violations_in("nasvit.nn", True, "__init__.py", "from ... import x\n")


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``nasvit`` modules it imports (lazy imports included), each import resolved
    to the longest module name it starts with (``from a.b import c`` is ``a.b.c`` if that is a
    module, else ``a.b``)."""
    files = [source for source in source_files() if source.module is not None]
    modules = {source.module for source in files if source.module is not None}
    graph: dict[str, set[str]] = {}
    for source in files:
        assert source.module is not None
        tree = ast.parse(source.path.read_text(encoding="utf-8"), filename=str(source.path))
        edges = graph.setdefault(source.module, set())
        for _, name in imported_names(tree, source.module, source.is_package):
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                target = ".".join(parts[:end])
                if target in modules:
                    if target != source.module:
                        edges.add(target)
                    break
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return list(error.args[1])
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "nasvit.searching.pipeline" in graph, "scan found no sources"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_reports_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    cycle = find_cycle({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    assert cycle is not None and set(cycle) == {"a", "b"}


#: What the agent's modules may import besides the standard library and nasvit.agent: a device
#: installs onnxruntime and numpy, nothing else (no torch, no onnx, no HTTP library).
AGENT_THIRD_PARTY = frozenset({"numpy", "onnxruntime"})


def test_the_agent_imports_only_the_standard_library_numpy_and_onnxruntime() -> None:
    import sys

    files = [
        s for s in source_files() if s.module is not None and _within(s.module, "nasvit.agent")
    ]
    assert any(s.module == "nasvit.agent.timing" for s in files), "scan found no agent sources"
    foreign = []
    for source in files:
        assert source.module is not None
        tree = ast.parse(source.path.read_text(encoding="utf-8"), filename=str(source.path))
        for line, name in imported_names(tree, source.module, source.is_package):
            top = name.split(".")[0]
            if top in ("nasvit", "__future__") or top in sys.stdlib_module_names:
                continue
            if top not in AGENT_THIRD_PARTY:
                foreign.append(f"{source.path.name}:{line}: {name}")
    assert not foreign, "the agent imports more than numpy and onnxruntime:\n" + "\n".join(foreign)
