"""The package's imports follow the layer order written in CONTRIBUTING.md.

The order is read from CONTRIBUTING.md's ``<!-- layers -->`` block, so the
diagram and this test cannot drift apart. Every ``import`` of the package's own
modules counts, wherever it stands (top level, inside a function, under
``TYPE_CHECKING``): a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "portable_rnn"


def layer_order(text: str) -> tuple[dict, set, dict]:
    """``(room -> layer index, independent layers, layer -> allowed private modules)`` from the block."""
    block = re.search(r"<!-- layers -->\s*```text\n(.*?)```\s*<!-- /layers -->", text, re.S)
    assert block, "CONTRIBUTING.md has no <!-- layers --> block"
    rooms, independent, private = {}, set(), {}
    for index, line in enumerate(block.group(1).strip().splitlines()):
        names, _, note = line.partition("(")
        for room in names.split()[1:]:
            assert room not in rooms, f"{room} is in two layers"
            rooms[room] = index
        if note.startswith("independent"):
            independent.add(index)
        if note.startswith("private:"):
            private[index] = set(note.removeprefix("private:").rstrip(") ").split())
    return rooms, independent, private


def module_names() -> dict:
    """``dotted name relative to the package ('' for its __init__) -> path``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: pathlib.Path, modules: dict) -> set:
    """The package modules that ``name`` imports ('' is the package's ``__init__``)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "portable_rnn" or node.module.startswith("portable_rnn.")):
                target = node.module.removeprefix("portable_rnn").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}".lstrip(".")
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "portable_rnn" or alias.name.startswith("portable_rnn."):
                    found.add(alias.name.removeprefix("portable_rnn").lstrip("."))
    found.discard(name)
    return {m for m in found if m in modules}


def room_of(module: str) -> str:
    return module.split(".")[0] if module else "__init__"


def is_private(module: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in module.split("."))


def violations(text: str, graph: dict) -> list[str]:
    """Every way ``graph`` (module -> imported modules) breaks the order in ``text``."""
    rooms, independent, private = layer_order(text)
    found = [f"{room_of(m) or m}: not placed in any layer" for m in graph if room_of(m) not in rooms]
    for module, targets in graph.items():
        here = rooms.get(room_of(module))
        for target in sorted(targets):
            there = rooms.get(room_of(target))
            if here is None or there is None or room_of(target) == room_of(module):
                continue
            who = f"{module or '__init__'} imports {target or 'the package __init__'}"
            if target == "":
                found.append(f"{who}: the version lives in _version; nothing imports the package's __init__")
            elif there > here:
                found.append(f"{who}, a later layer")
            elif there == here and here in independent:
                found.append(f"{who}: the modules of that layer are independent")
            elif here in private and is_private(target) and target not in private[here]:
                found.append(f"{who}: a private module this layer may not use")
    found += [f"import circle: {' -> '.join(c)}" for c in circles(graph)]
    return found


def circles(graph: dict) -> list[list[str]]:
    """Circles of imports between modules (each found once, from its first module)."""
    out, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                out.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return out


def levels(graph: dict) -> int:
    """Levels of imports between rooms (a top-level module, or a subpackage as a whole), ground = 1."""
    rooms: dict[str, set] = {}
    for module, targets in graph.items():
        rooms.setdefault(room_of(module), set()).update(room_of(t) for t in targets if room_of(t) != room_of(module))
    depth: dict[str, int] = {}

    def level(room):
        if room not in depth:
            depth[room] = 0  # a circle (reported by the order test) must not recurse forever
            depth[room] = 1 + max((level(t) for t in rooms.get(room, ())), default=0)
        return depth[room]

    return max(level(room) for room in rooms)


@pytest.fixture(scope="module")
def contributing():
    return (ROOT / "CONTRIBUTING.md").read_text()


@pytest.fixture(scope="module")
def graph():
    modules = module_names()
    return {name: imports(name, path, modules) for name, path in modules.items()}


def test_the_package_follows_the_layer_order(contributing, graph):
    assert violations(contributing, graph) == []


def test_at_most_eight_levels(graph):
    """From ``__main__`` down to the ground, each subpackage counted as one room."""
    assert levels(graph) <= 8
    assert levels({**graph, "launcher": {"__main__"}}) == levels(graph) + 1  # the count sees a new top


def test_every_module_is_seen(graph):
    """The reader finds the imports it must find (else the test above could pass on nothing)."""
    assert "engine.sequence" in graph["layers"] and "engine.kernels" in graph["engine.sequence"]  # module-level imports
    assert "app.cli" in graph["__main__"] and "_version" in graph[""]
    assert "engine.sequence" in graph["app.bench.kernels"]  # a subpackage's module


@pytest.mark.parametrize("change, message", [
    ({"engine.cells": {"layers"}}, "engine.cells imports layers, a later layer"),
    ({"cs231n": {"model"}}, "cs231n imports model: the modules of that layer are independent"),
    ({"io": {""}}, "io imports the package __init__: the version lives in _version"),
    ({"app.train": {"engine.kernels", "engine.loop", "init", "interop._common"}}, None),
    ({"app.train": {"_secret"}}, "app.train imports _secret: a private module this layer may not use"),
    ({"engine.loop": {"engine.sequence"}}, "import circle"),
    ({"brand_new": set()}, "brand_new: not placed in any layer"),
])
def test_each_rule_fails_when_broken(contributing, graph, change, message):
    """Each rule catches the break it is written for (edges added to the real graph)."""
    broken = {m: set(t) for m, t in graph.items()}
    for module, targets in change.items():
        broken.setdefault(module, set()).update(t for t in targets)
        for t in targets:
            broken.setdefault(t, set())
    text = contributing.replace("ground    _version", "ground    _secret _version")  # a private module
    found = violations(text, broken)
    if message is None:
        assert not [v for v in found if "app." in v and "private" in v], found
    else:
        assert any(message in v for v in found), found
