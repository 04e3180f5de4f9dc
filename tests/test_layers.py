"""The architecture's rules, checked on the source (issue 21, item 6; what import-linter would
check, with the project's own words):

- ``shard_worker`` never imports ``supervisor``: the parent knows the child, not the reverse;
- the pure cores (Discord's protocol rules, the IPC vocabulary and framing, the identify gate,
  the reshard plan, the cluster rules, the exit decision, backoff, ratelimit and send-window
  arithmetic...) import no sockets, threads, subprocesses or event loops: they are tested without;
- the simulated Discord does not share the client's protocol module: a test oracle that imports
  the constants of the code under test cannot catch a wrong constant (the simulator's own copy of
  Discord's facts is ``supervisor/simulator/discord_facts.py``);
- no import cycle between the project's modules and scripts (counting imports inside functions).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shard_worker", "supervisor")

#: Modules of pure logic: no I/O of their own, and typed (mypy checks the same list, from
#: pyproject.toml's [tool.mypy] files, in the test command).
PURE = tuple(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"])
IO_MODULES = {"socket", "threading", "subprocess", "asyncio", "selectors", "multiprocessing", "ssl",
              "websockets", "pika", "redis", "urllib.request", "http.client", "http.server"}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The modules ``path`` imports (``from a import b`` counts ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_the_pure_list_names_real_modules():
    assert len(PURE) >= 20 and all((ROOT / relative).is_file() for relative in PURE)


def test_shard_worker_never_imports_supervisor():
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imports(path) if m == "supervisor" or m.startswith("supervisor."))
        for path in sources("shard_worker")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("relative", PURE)
def test_a_pure_core_does_no_io(relative):
    used = imports(ROOT / relative)
    assert sorted(m for m in used if m in IO_MODULES or m.split(".")[0] in IO_MODULES) == []


def test_the_simulator_does_not_share_the_clients_protocol_module():
    shared = {
        str(path.relative_to(ROOT)): sorted(m for m in imports(path) if m.startswith("shard_worker.gateway.protocol"))
        for path in sources("supervisor/simulator")
    }
    assert {k: v for k, v in shared.items() if v} == {}


def test_no_import_cycle_between_modules():
    modules = {module_name(p): p for package in PACKAGES for p in sources(package)}
    modules |= {p.stem: p for p in sorted((ROOT / "scripts").glob("*.py"))}  # the scripts import each other by name
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports(path):
            # ``from a import b``: b may be a module (a.b) or a name in a
            target = imported if imported in modules else imported.rsplit(".", 1)[0]
            # a module importing its own package (``from pkg import sibling``) runs no cycle:
            # the package's __init__ is already executing or done
            if target in modules and target != name and not name.startswith(target + "."):
                targets.add(target)
        graph[name] = targets
    cycles = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []
