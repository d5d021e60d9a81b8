"""The shape of predictor/ and the CLI (issue 22, "One way through"): small functions, no import cycle among
predictor modules, and option choices that are the code's own registries rather than copies of them."""
import ast

import pytest

from conftest import ROOT

LONGEST = 80  # lines of one function, docstring included
PREDICTOR = sorted((ROOT / "predictor").glob("*.py"))
CLI = sorted((ROOT / "collector").glob("cli*.py"))


def functions(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_over_80_lines_in_predictor_and_the_cli():
    assert len(PREDICTOR) > 15 and len(CLI) >= 7
    long = [f"{p.relative_to(ROOT)}: {name} has {n} lines" for p in PREDICTOR + CLI for name, n in functions(p)
            if n > LONGEST]
    assert not long, long


def predictor_imports(path) -> set:
    """The predictor modules a predictor module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("latkit.predictor"):
            rest = node.module.split(".")[2:]
            found |= {rest[0]} if rest else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("latkit.predictor.")}
    return found & {p.stem for p in PREDICTOR}


def test_no_import_cycle_among_predictor_modules():
    graph = {p.stem: predictor_imports(p) for p in PREDICTOR}
    assert "base" in graph["ensemble"] and "models" in graph["esm"]  # the walk sees the imports it must
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_model_kinds_are_one_registry():
    """make_model, the file loader and --model read predictor/models.py's KINDS; the CLI keeps the names
    (it must not import predictor to parse arguments), checked here."""
    from latkit.collector.cli_common import GRAPH_MODEL_NAMES, GRAPH_SPACE, MODEL_NAMES
    from latkit.collector.spaces import SPACES
    from latkit.predictor import limits
    from latkit.predictor.graphdata import MODEL_KINDS
    from latkit.predictor.models import KINDS, MODELS
    assert MODEL_NAMES == MODELS == tuple(k for k in KINDS if k not in ("ensemble", "fewshot"))
    assert GRAPH_MODEL_NAMES == MODEL_KINDS and GRAPH_SPACE not in SPACES  # --space onnx: no search space
    for kind in KINDS:  # limits knows every kind's ranges (an unknown kind would say so)
        with pytest.raises(ValueError) as e:
            limits.check(kind, {"no_such_parameter": 1})
        assert "unknown model kind" not in str(e.value)


def choices(parser, command: str, option: str) -> list:
    for word in command.split():
        parser = next(a for a in parser._actions if a.dest.endswith("command")).choices[word]
    return list(next(a for a in parser._actions if option in a.option_strings).choices)


def test_cli_choices_are_the_registries():
    from latkit.collector.cli import build_parser
    from latkit.collector.cli_common import ACCELERATORS, DTYPES
    from latkit.collector.job import RUNTIMES, Settings
    from latkit.collector.samplers import SAMPLERS
    from latkit.collector.errors import LatkitError
    p = build_parser()
    assert choices(p, "collect", "--sampler") == ["uniform", "balanced", "diverse"]
    assert choices(p, "predictor fit", "--sampler") == ["balanced", "uniform", "diverse"]
    assert sorted(choices(p, "collect", "--sampler")) == sorted(SAMPLERS)
    assert choices(p, "predictor fit", "--model") == ["auto", "ridge", "gbdt", "rf", "mlp", "gnn", "kernels", "flops"]
    for command in ("measure", "collect"):
        assert choices(p, command, "--runtime") == list(RUNTIMES)
        assert choices(p, command, "--accelerator") == list(ACCELERATORS) == ["cpu", "cuda"]
        assert choices(p, command, "--dtype") == list(DTYPES) == ["float32", "float16", "bfloat16"]
    for dtype in DTYPES:  # what Settings (and with it the agent) accepts, no more
        Settings(runtime="torch", accelerator="cuda", dtype=dtype)
    with pytest.raises(LatkitError):
        Settings(runtime="torch", accelerator="cuda", dtype="float64")
    with pytest.raises(LatkitError):
        Settings(accelerator="npu")


def test_metric_keys_are_one_list():
    """`predictor fit` prints and saves, and scripts/gpu_e2e.py reports, predictor/metrics.py's METRICS."""
    from latkit.predictor.metrics import METRICS, report
    assert tuple(report([1.0, 2.0, 3.0], [1.1, 2.0, 2.5])) == METRICS
    for path in (ROOT / "collector" / "cli_predictor.py", ROOT / "scripts" / "gpu_e2e.py"):
        text = path.read_text()
        assert "METRICS" in text and '"kendall", "mape"' not in text, path
