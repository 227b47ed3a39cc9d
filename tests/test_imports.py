"""The import graph of `bdh`: no cycles (module-level and function-local imports alike), and low-level modules
never import the model, the baselines, training, analysis, graph or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# modules every part of the package builds on: they must not import the layers above them
LOW = ("bdh.config", "bdh.attention", "bdh.state", "bdh.io", "bdh.interface", "bdh._version", "bdh.checkpoint",
       "bdh.tokenization", "bdh.hooks")
HIGH = ("bdh.model", "bdh.baselines", "bdh.training", "bdh.analysis", "bdh.graph", "bdh.cli", "bdh.view", "bdh.serve",
        "bdh.hf", "bdh.tasks")

# Known cycles, left to their owners (issue #12): edges ignored by test_no_import_cycles until fixed. Each must
# still exist (test_known_cycles_are_still_there), so a fix fails that test until the entry is removed here.
KNOWN_CYCLE_EDGES = {
}


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of src/bdh (packages as their __init__.py)."""
    out = {}
    for path in sorted((SRC / "bdh").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _edges(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The bdh modules `name` imports (anywhere in the file) -> the line of the first such import.

    `from pkg import x` is an edge to `pkg.x` when that is a module, else to `pkg`; relative imports are resolved
    against the module's package; no implicit edges to parent packages are added.
    """
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target in modules and target != name:
            out.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                add(sub if sub in modules else mod, node.lineno)
    return out


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def _find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the directed graph, or None (iterative DFS, deterministic order)."""
    color = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    for root in sorted(graph):
        if color[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        color[root] = 1
        path = [root]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[node] = 2
                stack.pop()
                path.pop()
            elif color[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif color[nxt] == 0:
                color[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    modules = _modules()
    return " -> ".join(f"{a} ({modules[a].relative_to(SRC)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])) \
        + f" -> {cycle[-1]}"


def test_the_walker_resolves_imports():
    g = _graph()
    assert "bdh.interface" in g["bdh.checkpoint"]  # from .interface import ...
    assert "bdh.baselines.gpt" in g["bdh"]  # from .baselines import gpt (a module)
    assert "bdh.config" in g["bdh.baselines.gpt"]  # from ..config import JSONConfig (a name: the module itself)
    assert "bdh.reference" in g["bdh.model"]  # function-local: from .reference import load_reference
    assert not any(m == "bdh" or m.startswith("bdh.") for m in g["bdh._version"])
    assert _find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycles():
    g = _graph()
    g = {a: {b: line for b, line in e.items() if (a, b) not in KNOWN_CYCLE_EDGES} for a, e in g.items()}
    cycle = _find_cycle(g)
    assert cycle is None, "import cycle: " + _describe(cycle, g)


def test_known_cycles_are_still_there():
    g = _graph()
    for a, b in sorted(KNOWN_CYCLE_EDGES):
        assert b in g[a], f"{a} no longer imports {b}: remove it from KNOWN_CYCLE_EDGES"


@pytest.mark.parametrize("low", LOW)
def test_low_level_modules_do_not_import_the_layers_above(low):
    g = _graph()
    seen, todo, bad = {low}, [low], []
    while todo:  # everything `low` reaches, directly or through other modules
        m = todo.pop()
        for t in g[m]:
            if any(t == h or t.startswith(h + ".") for h in HIGH):
                bad.append(f"{m} -> {t} ({_modules()[m].relative_to(SRC)}:{g[m][t]})")
            if t not in seen:
                seen.add(t)
                todo.append(t)
    assert not bad, f"{low} imports the layers above it: " + "; ".join(sorted(bad))


def _is_command_module(name: str) -> bool:
    """The command line's own modules: `bdh.cli` and every `*.cli` (plus `bdh.__main__`, the entry point)."""
    return name in ("bdh.cli", "bdh.__main__") or name.endswith(".cli")


def test_only_command_modules_import_the_command_line():
    """The command line is the top floor: a library module never imports a cli module (what commands share,
    `--device` / `--threads` and the argparse types, lives in `bdh.runtime`)."""
    g = _graph()
    assert "bdh.cli" in g["bdh.serve.cli"] and "bdh.runtime" in g["bdh.cli"]  # the walker sees these imports
    bad = [f"{a} -> {b} ({_modules()[a].relative_to(SRC)}:{line})" for a, e in sorted(g.items())
           if not _is_command_module(a) for b, line in sorted(e.items()) if _is_command_module(b)]
    assert not bad, "library modules import the command line: " + "; ".join(bad)


def test_only_the_model_side_calls_the_attention_forms():
    """The attention functions of `bdh.attention` (the three forms and their state write) are called from
    `bdh.forms` only: analysis, viewers and tools read rho through the model (its states, `BDH.states_at`,
    the `rho` hook point), never by re-running the attention themselves."""
    forms = {"attention_parallel", "attention_chunked", "attention_step", "attention_step_scaled", "_advance_state"}
    allowed = {"bdh.attention", "bdh.forms"}
    users = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "attention":
                hit = forms & {a.name for a in node.names}
            elif isinstance(node, ast.Attribute) and node.attr in forms:
                hit = {node.attr}
            else:
                continue
            if hit:
                users.setdefault(name, set()).update(hit)
    assert "bdh.forms" in users  # the walker sees the one allowed user
    bad = {m: sorted(h) for m, h in users.items() if m not in allowed}
    assert not bad, f"modules other than bdh.forms use the attention forms: {bad}"


# packages that must not import others of the same layer (module-level or function-local, directly or through any
# other module): the trainer knows data only through bdh.training.data_source; bdh.tasks registers its source
NEVER_IMPORTS = [("bdh.training", "bdh.tasks")]


@pytest.mark.parametrize("user,used", NEVER_IMPORTS)
def test_package_never_imports_another(user, used):
    g, modules = _graph(), _modules()
    starts = [m for m in g if m == user or m.startswith(user + ".")]
    seen, todo, bad = set(starts), list(starts), []
    while todo:
        m = todo.pop()
        for t in g[m]:
            if t == used or t.startswith(used + "."):
                bad.append(f"{m} -> {t} ({modules[m].relative_to(SRC)}:{g[m][t]})")
            elif t not in seen:
                seen.add(t)
                todo.append(t)
    assert starts and not bad, f"{user} imports {used}: " + "; ".join(sorted(bad))
