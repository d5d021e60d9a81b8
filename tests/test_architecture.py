"""docs/ARCHITECTURE.md against the code: every module is named with what it owns, and every step of "Where
new things go" names files and symbols (`file:SYMBOL`) that exist, so the page cannot drift from the tree."""
import ast
import re

from conftest import ROOT

DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
TOPS = ("agents", "collector", "predictor")
PATH = r"(?:agents|collector|predictor|tests|scripts|docs)/[\w./-]*"


def section(title: str) -> str:
    return DOC.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def step_lists() -> dict:
    """### heading -> its numbered steps."""
    out = {}
    for block in section("Where new things go").split("\n### ")[1:]:
        title, *lines = block.splitlines()
        out[title] = [line for line in lines if re.match(r"\d+\. ", line)]
    return out


def defined(path, symbol: str) -> bool:
    """Whether `symbol` (NAME or Class.NAME) is defined at the top of the file, or in that class."""
    body = ast.parse(path.read_text(), str(path)).body
    for part in symbol.split("."):
        names = {}
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                names[node.name] = node
            elif isinstance(node, ast.Assign):
                names.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names[node.target.id] = node
        if part not in names:
            return False
        body = getattr(names[part], "body", [])
    return True


def test_every_module_is_named_with_what_it_owns():
    named = {p for p in re.findall(rf"`({PATH}\.py)`", section("Modules")) if p.split("/")[0] in TOPS}
    modules = {str(p.relative_to(ROOT)) for top in TOPS
               for p in (ROOT / top).rglob("*.py")}
    assert modules - named == set(), sorted(modules - named)
    assert named - modules == set(), sorted(named - modules)


def test_step_lists_name_files_and_symbols_that_exist():
    steps = step_lists()
    assert {"A runtime", "A search space", "A transport", "An executor", "A predictor"} <= set(steps)
    checked = 0
    for title, lines in steps.items():
        assert lines, f"{title}: no steps"
        refs = re.findall(rf"`({PATH})(?::([\w.]+))?`", "\n".join(lines))
        assert refs, f"{title}: its steps name no file"
        for path, symbol in refs:
            file = ROOT / path
            assert file.exists(), f"{title}: {path} does not exist"
            if symbol:
                assert file.is_file() and defined(file, symbol), f"{title}: {path} defines no {symbol}"
                checked += 1
    assert checked >= 20
