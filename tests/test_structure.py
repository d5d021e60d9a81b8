"""The shape of the code (issue 22, "One way through"): tables the agent restates agree with the collector's,
frozen values hash, no import cycle (imports inside functions included), no function too long to read."""
import ast
import dataclasses
import sys
from pathlib import Path

import pytest

from latkit.agents import agent
from latkit.collector import formats
from latkit.collector.job import Artifact, InputSpec, Job, Settings


def test_agent_format_tables_match_the_collectors():
    assert agent.RUNTIMES == formats.RUNTIMES
    assert agent.RUNTIME_OF_EXTENSION == formats.RUNTIME_OF_EXTENSION
    assert set(agent.FORMAT_OF_RUNTIME) == set(formats.RUNTIMES) == set(agent.LOADERS)
    assert set(formats.EXPORT_FORMAT) == set(formats.RUNTIMES)


def test_artifact_and_job_with_inputs_hash():
    art = Artifact(path="/m/a.pt", sha256="0" * 64, format="torchscript",
                   inputs=({"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"},))
    assert art.inputs == (InputSpec("x", (1, 3, 8, 8)),) and art.inputs[0].to_dict()["shape"] == [1, 3, 8, 8]
    job = Job(art, "local", Settings())
    assert len({art, dataclasses.replace(art)}) == 1 and len({job, dataclasses.replace(job)}) == 1


# Module graph: every import of collector/, predictor/ and agents/ (top-level and inside functions: an import
# inside a function only hides a cycle), between the modules of these packages.

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("collector", "predictor", "agents")


def modules(package: str) -> dict:
    """latkit module name -> file, for every module of `package` (a package's __init__ under its own name)."""
    out = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(["latkit", *parts])] = f
    return out


def imports_of(name: str, path: Path, known: dict) -> set:
    """The known modules `path` imports anywhere in it: `from . import x` names module x where x is one, and a
    name imported from a module counts as that module."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            if base.split(".")[0] in PACKAGES:
                base = "latkit." + base  # a bare name: caught by test_layers, resolved here all the same
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def cycles(packages) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    known = {}
    for p in packages:
        known.update(modules(p))
    graph = {m: imports_of(m, f, known) for m, f in known.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "collector"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")  # inside a function: still a cycle
    (pkg / "c.py").write_text("from latkit.collector import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert cycles(["collector"]) == [["latkit.collector.a", "latkit.collector.b"]]


def test_no_import_cycle_in_collector_and_agents():
    assert cycles(["collector", "agents"]) == []


def test_no_import_cycle_in_predictor():
    assert cycles(["predictor"]) == []


def test_no_import_cycle_across_the_packages():
    """collector/ and agents/ together with predictor/: no cycle through more than one package."""
    assert [c for c in cycles(PACKAGES) if len({m.split(".")[1] for m in c}) > 1] == []


def long_functions(files, limit: int) -> list:
    found = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_collector_function_over_80_lines():
    files = list((ROOT / "collector").rglob("*.py"))
    assert len(files) > 20 and long_functions(files, 80) == []


def test_no_agent_function_over_100_lines():
    assert long_functions([ROOT / "agents" / "agent.py"], 100) == []


def test_agent_uses_no_top_level_name_above_its_definition():
    """Read top to bottom, the agent defines each helper before the code that calls it."""
    tree = ast.parse((ROOT / "agents" / "agent.py").read_text())
    defined = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.setdefault(node.name, node.lineno)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for x in ast.walk(t):
                    if isinstance(x, ast.Name):
                        defined.setdefault(x.id, node.lineno)
    early = sorted({f"{getattr(node, 'name', node.lineno)} uses {x.id}" for node in tree.body for x in ast.walk(node)
                    if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Load) and defined.get(x.id, 0) > node.lineno})
    assert early == []
