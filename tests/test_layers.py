"""Layer rules, read from the code (an AST walk over pipelines/, no import executed).

Pages flow sources -> feeds -> warehouse; imports must point the other way and never back, so a
module can be read (and tested) without the layers above it:

- the sandbox imports nothing of ``pipelines`` outside itself (it is every API's simulator, and
  the tests' peer: it must not share code with what it tests);
- the warehouse layer (DuckDB access, staging, merge) imports no source, feed, resource or
  Dagster module;
- feeds import no Dagster (they run under any orchestrator, and in tests without one);
- no import cycle between modules of ``pipelines``.

Imports under ``if TYPE_CHECKING:`` are annotations only and not counted; imports inside
functions are (they run).
"""

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
# pipelines.page (the hand-off type) and pipelines.clock (the warehouse clock) sit below every layer.
WAREHOUSE_LAYER = ("pipelines.warehouse",)
ABOVE_THE_WAREHOUSE = (
    "pipelines.sources",
    "pipelines.feeds",
    "pipelines.defs",
    "pipelines.assets",
    "pipelines.resources",
    "pipelines.definitions",
    "pipelines.schedules",
    "pipelines.checks",
    "pipelines.cli",
    "dagster",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((ROOT / "pipelines").rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports at run time (absolute names; ``from a import b`` counts as
    ``a`` and, when ``a.b`` is a module, ``a.b`` too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES)

    Visitor().visit(ast.parse(path.read_text(), str(path)))
    return found


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(modules: tuple[str, ...], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for name in MODULES:
        if under(name, modules):
            hits = sorted(i for i in imports_of(name) if under(i, forbidden))
            if hits:
                bad[name] = hits
    return bad


def test_the_walk_sees_the_layers():
    assert "pipelines.warehouse.loader" in MODULES and "pipelines.feeds.run" in MODULES
    assert "duckdb" in imports_of("pipelines.warehouse.loader")  # the walk reads imports at all
    assert "pipelines.warehouse" in imports_of("pipelines.warehouse.loader")


def test_the_sandbox_imports_nothing_of_pipelines_outside_itself():
    bad = {
        name: sorted(i for i in imports_of(name) if under(i, ("pipelines",)) and not under(i, ("pipelines.sandbox",)))
        for name in MODULES
        if under(name, ("pipelines.sandbox",))
    }
    assert {name: hits for name, hits in bad.items() if hits} == {}


def test_the_warehouse_layer_imports_no_source_feed_or_dagster_module():
    assert violations(WAREHOUSE_LAYER, ABOVE_THE_WAREHOUSE) == {}


def test_feeds_do_not_import_dagster():
    assert violations(("pipelines.feeds",), ("dagster", "pipelines.defs", "pipelines.assets", "pipelines.resources")) == {}


def test_no_import_cycle():
    graph = {name: {i for i in imports_of(name) if i in MODULES and i != name} for name in MODULES}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_sources_are_api_clients_only():
    assert violations(("pipelines.sources",), ("duckdb", "dagster", "pipelines.feeds", *WAREHOUSE_LAYER)) == {}


# -- each concept once (issue 13, property 4): read from the code like the rules above ----------


def modules_matching(pattern: str) -> list[str]:
    import re

    regex = re.compile(pattern)
    return sorted(
        name for name, path in MODULES.items()
        if not under(name, ("pipelines.sandbox",)) and regex.search(path.read_text())
    )


def test_one_stream_driver_opens_and_commits_every_stream_load():
    assert modules_matching(r"\bStreamLoad\(") == ["pipelines.feeds.run"]
    assert modules_matching(r"\.commit\(\s*\n?\s*cursor=") == ["pipelines.feeds.run"]


def test_one_quarantine_writer():
    assert modules_matching(r"(?i)(merge|insert)\s+(or\s+\w+\s+)?into\s+\S*quarantine") == ["pipelines.warehouse.loader"]
