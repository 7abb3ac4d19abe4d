"""Imports point down the pipeline, and no module imports itself back through others.

An AST walk over ``src/volpack`` reads every import (at module level and inside functions, since
a lazy import is still a dependency) and checks it against the layer order below, then looks for
cycles between modules. The order is the pipeline of docs/architecture (DESIGN §2): values and
helpers first, then the stages in the order data flows through them, then the verbs and the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first. A module may import its own top-level package and anything in a lower layer;
# names on one line are siblings that must not import each other. Why this order:
# - errors, extents, physmap, units, identity, partials, atomic, writeback: values and helpers
#   with no knowledge of any stage (physmap is the physical-map value every stage passes on);
# - source < detect < compact: detectors read a Source, the address table is built from their
#   used map;
# - media < format: format reads and writes through the media protocols; media move opaque bytes
#   and never parse them;
# - targets: restore's writers read the archive description and physical map (format);
# - catalog, serve, cleanup: built on whole archives and media, used by the verbs and the CLI;
# - pipeline: the verbs wiring the stages; the package root re-exports them; cli is the front end.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "extents"),
    # exactio: positioned reads and writes that raise the caller's error family.
    # buffers: I/O buffers placed where the kernel copies into them at full speed.
    # nbdwire: the NBD protocol's numbers and structs, one owner for the client (source/,
    # targets/) and the server (serve/), which sit in different layers.
    ("physmap", "units", "identity", "partials", "writeback", "exactio", "buffers", "nbdwire"),
    ("atomic",),
    # crypto: keys, key slots and sealing; bytes in memory (and local key files through atomic),
    # below format, which will seal its records with it.
    ("crypto",),
    ("source",),
    ("detect",),
    ("compact",),
    ("media",),
    ("format",),
    ("targets",),
    ("catalog", "serve", "cleanup"),
    ("pipeline",),
    ("",),  # the package root, volpack/__init__.py: the public API
    ("cli",),
    ("__main__",),
]
# Skips the order alone would allow but the design forbids: format knows bytes on the medium,
# never sources or detectors (the writer takes tables and dense bytes); media move opaque bytes.
FORBIDDEN = {
    "format": {"source", "detect"},
    "media": {"source", "detect", "compact"},
}
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# Python initialises the package root before any of its modules, so reading a constant the root
# defines is no dependency on what it re-exports lazily.
ROOT_CONSTANTS = {"__version__"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "volpack").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[int, str, set[str]]]:
    """(line, imported module, names taken from it) for each volpack import in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, set()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append(
                    (node.lineno, sub, set()) if sub in MODULES else (node.lineno, base, {a.name})
                )
    return [(line, mod, names) for line, mod, names in found if mod.split(".")[0] == "volpack"]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _edges() -> dict[str, set[str]]:
    return {
        name: {
            mod
            for _, mod, names in _imports(name, path)
            if not names <= ROOT_CONSTANTS or mod != "volpack"
        }
        for name, path in MODULES.items()
    }


def test_every_module_belongs_to_a_declared_layer():
    unknown = sorted({_layer(m) for m in MODULES} - RANK.keys())
    assert not unknown, f"add {unknown} to LAYERS in {__file__} (lowest first), saying why"


def test_imports_point_down_the_pipeline():
    upward = []
    for name, path in sorted(MODULES.items()):
        here = _layer(name)
        for line, mod, names in _imports(name, path):
            there = _layer(mod)
            if there == here or (mod == "volpack" and names and names <= ROOT_CONSTANTS):
                continue
            if RANK.get(there, -1) >= RANK.get(here, -1) or there in FORBIDDEN.get(here, ()):
                rel = path.relative_to(SRC)
                upward.append(
                    f"{rel}:{line} imports {mod} ({here or 'root'} may not import {there or 'root'})"
                )
    upward = sorted(set(upward))
    assert not upward, "imports that do not point down the pipeline:\n" + "\n".join(upward)


def test_no_module_imports_itself_back_through_a_cycle():
    graph = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
