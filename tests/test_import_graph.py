"""The import graph runs one way: no module of the library (or of the Dagster layer) reaches itself through
its imports, module-level and function-local alike, and a function-local import of a library module is
there only to keep a heavy, optional dependency off start-up, never to dodge a circle.

The graph is read from the source with `ast`, not from `sys.modules`: an import inside a function counts
as much as one at the top, because moving it there must not create a circle. Importing `a.b.c` runs the
packages `a` and `a.b` first, so it depends on their `__init__` too, except on the packages that hold the
importer (those are already running when it runs). Imports under `if TYPE_CHECKING:` never run: skipped.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "crypto_pipeline"
DAGSTER_LAYER = ("assets", "jobs", "sensors", "definitions")

# Function-local imports of library modules that keep a heavy or optional dependency off start-up:
# (importer, imported) -> what it spares those who import the importer. Anything else goes to the top.
DEFERRED_FOR_START_UP: dict[tuple[str, str], str] = {
    ("crypto_pipeline.backtest.audits", "crypto_pipeline.backtest.metrics"): (
        "vectorbt (seconds to import): only the one-bar-lag audit scores a run"
    ),
    ("crypto_pipeline.backtest.run", "crypto_pipeline.backtest.report"): (
        "matplotlib: only a backtest asked for its report draws one"
    ),
    ("crypto_pipeline.features.build", "crypto_pipeline.ingest"): (
        "alpaca-py (through market.sources): `crypto_pipeline.features` stays light for those who only "
        "compute features"
    ),
    ("crypto_pipeline.features.compute", "crypto_pipeline.features.kernels"): (
        "numba: the compiled kernels load only when features are computed"
    ),
    ("crypto_pipeline.journal.performance", "crypto_pipeline.plots"): (
        "matplotlib: only a summary asked for its chart draws one"
    ),
    ("crypto_pipeline.live.run", "crypto_pipeline.exchange"): (
        "FastAPI and uvicorn: only a session that embeds the local exchange starts one"
    ),
    ("crypto_pipeline.llm.local", "crypto_pipeline.llm.constrained"): (
        "torch and transformers: importing LocalLLM does not load them, generating does"
    ),
    ("crypto_pipeline.llm.local", "crypto_pipeline.llm.decoding"): (
        "torch: importing LocalLLM does not load it, generating does"
    ),
    ("crypto_pipeline.llm.local", "crypto_pipeline.llm.kv_cache"): (
        "torch and transformers: importing LocalLLM does not load them, generating does"
    ),
    ("crypto_pipeline.registry", "crypto_pipeline.llm.openai_compat"): (
        "httpx: only the `openai` provider talks HTTP"
    ),
    ("crypto_pipeline.state.build", "crypto_pipeline.ingest"): (
        "alpaca-py (through market.sources): building states from the warehouse never fetches bars"
    ),
    ("crypto_pipeline.state.build", "crypto_pipeline.market.sources"): (
        "alpaca-py: building a state from the recorded Parquet files never talks to Alpaca"
    ),
}
# Modules whose every function-local import is deferred, and why.
DEFERRING_MODULES: dict[str, str] = {
    "crypto_pipeline.cli": (
        "each command imports what it runs, so `crypto-pipeline --help` answers without loading polars, "
        "torch, alpaca-py or vectorbt"
    ),
}
# The one door from the library into the Dagster layer: `crypto-pipeline run` runs the Dagster jobs.
LIBRARY_TO_DAGSTER = {("crypto_pipeline.cli", "jobs.run_offline")}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str  # the module named (a package's `__init__` for names imported from it)
    path: Path
    line: int
    local: bool  # inside a function: runs on first call, not at import

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the library and of the Dagster layer, by dotted name."""
    paths = [*(ROOT / LIBRARY).rglob("*.py")]
    for top in DAGSTER_LAYER:
        paths += [*(ROOT / top).rglob("*.py")] if (ROOT / top).is_dir() else [ROOT / f"{top}.py"]
    return {_module_name(p): p for p in sorted(paths) if "__pycache__" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    known = modules()
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = module.split(".") if known[module].name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def _imports_in(module: str, path: Path) -> Iterable[Import]:
    def walk(node: ast.AST, local: bool) -> Iterable[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    yield from walk_one(other, local)
                continue
            yield from walk_one(child, local)

    def walk_one(node: ast.AST, local: bool) -> Iterable[Import]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _targets(module, node):
                yield Import(module, target, path, node.lineno, local)
            return
        inner = local or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from walk(node, inner)

    yield from walk(ast.parse(path.read_text(), filename=str(path)), False)


@cache
def imports() -> tuple[Import, ...]:
    """Every import between our modules (third-party ones left out), module-level and function-local."""
    known = modules()
    return tuple(
        i for name, path in known.items() for i in _imports_in(name, path) if i.imported.split(".")[0] in
        {LIBRARY, *DAGSTER_LAYER} and _runs(i)
    )  # fmt: skip


def _runs(i: Import) -> bool:
    # `import jobs` where `jobs` is some other package would be a name we do not own: only ours count.
    return any(i.imported == m or i.imported.startswith(m + ".") for m in modules())


def _depends_on(i: Import) -> list[str]:
    """The modules an import runs: the one named and every package above it that does not hold the
    importer (those run before the importer does)."""
    parts = i.imported.split(".")
    chain = [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return [m for m in chain if m in modules() and m != i.importer and not i.importer.startswith(m + ".")]


def graph() -> dict[str, dict[str, Import]]:
    edges: dict[str, dict[str, Import]] = {m: {} for m in modules()}
    for i in imports():
        for dep in _depends_on(i):
            edges[i.importer].setdefault(dep, i)
    return edges


def cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path_around(v, component, edges))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _path_around(start: str, component: set[str], edges: dict[str, dict[str, Import]]) -> list[str]:
    """The shortest path from `start` back to itself inside one strongly connected component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w in component and w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a component without a cycle through it")


def describe(cycle: list[str], edges: dict[str, dict[str, Import]]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:], strict=False):
        i = edges[a][b]
        steps.append(f"{a} -> {b} ({i.where}{', in a function' if i.local else ''})")
    return "\n  ".join(steps)


def test_the_graph_sees_every_module_and_both_kinds_of_import() -> None:
    known = modules()
    assert {"crypto_pipeline.state", "crypto_pipeline.state.build", "definitions", "jobs.live"} <= set(known)
    local = [i for i in imports() if i.local]
    assert local and any(not i.local for i in imports())
    # A name imported from a package resolves to the submodule when there is one.
    assert any(
        i.importer == "crypto_pipeline.cli" and i.imported == "crypto_pipeline.state.build" for i in local
    )


def test_no_module_of_the_library_reaches_itself_through_its_imports() -> None:
    edges = graph()
    library = {m: {d: i for d, i in out.items() if d.startswith(LIBRARY)} for m, out in edges.items()}
    library = {m: out for m, out in library.items() if m.startswith(LIBRARY)}
    found = cycles(library)
    assert not found, "import circles in the library:\n  " + "\n\n  ".join(
        describe(c, library) for c in found
    )


def test_no_module_of_the_dagster_layer_reaches_itself_through_its_imports() -> None:
    edges = graph()
    found = cycles(edges)
    assert not found, "import circles:\n  " + "\n\n  ".join(describe(c, edges) for c in found)


def test_the_library_never_imports_dagster_or_the_dagster_layer() -> None:
    wrong = []
    for path in sorted((ROOT / LIBRARY).rglob("*.py")):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(module, node):
                top = target.split(".")[0]
                if (top == "dagster" or top in DAGSTER_LAYER) and (module, target) not in LIBRARY_TO_DAGSTER:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    assert not wrong, "the library imports the Dagster layer:\n" + "\n".join(wrong)


def test_a_function_local_import_only_defers_a_heavy_dependency_never_dodges_a_circle() -> None:
    edges = graph()
    wrong: list[str] = []
    for i in dict.fromkeys(imports()):  # one per import statement and module named
        if not (i.local and i.importer.startswith(LIBRARY) and i.imported.startswith(LIBRARY)):
            continue
        # At module level it would run at import: would that close a circle?
        back = any(_reaches(edges, dep, i.importer) for dep in _depends_on(i))
        if back:
            wrong.append(f"{i.where}: {i.importer} imports {i.imported} in a function to dodge a circle")
        elif i.importer not in DEFERRING_MODULES and (i.importer, i.imported) not in DEFERRED_FOR_START_UP:
            wrong.append(
                f"{i.where}: {i.importer} imports {i.imported} in a function: import it at the top, or, "
                "if it keeps a heavy dependency off start-up, add it with the reason to DEFERRED_FOR_START_UP"
            )
    assert not wrong, "\n".join(wrong)


def test_every_allowlisted_deferred_import_still_exists() -> None:
    local = {(i.importer, i.imported) for i in imports() if i.local}
    stale = [pair for pair in DEFERRED_FOR_START_UP if pair not in local]
    assert not stale, f"allowlist entries no function-local import uses any more (remove them): {stale}"
    assert all(DEFERRED_FOR_START_UP.values()) and all(DEFERRING_MODULES.values())


def _reaches(edges: dict[str, dict[str, Import]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        v = todo.pop()
        if v == goal:
            return True
        for w in edges.get(v, {}):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return False
