"""The package layers: predictor builds on collector, never the reverse, so the measuring side (and the
device agent) can be used, tested and shipped without the predictors. The CLI sits on top of both and imports
predictor only inside its predictor commands (collector/cli_predictor.py)."""
import ast
import subprocess
import sys

from conftest import ROOT


def test_importing_collector_loads_no_predictor():
    """Every collector module, the CLI included, imports without loading any predictor module."""
    code = ("import pkgutil, sys, importlib, latkit.collector as c\n"
            "for m in pkgutil.walk_packages(c.__path__, 'latkit.collector.'):\n"
            "    importlib.import_module(m.name)\n"
            "loaded = [m for m in sys.modules if m.startswith('latkit.predictor')]\n"
            "assert 'latkit.collector.cli' in sys.modules and not loaded, loaded\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_everything_imports_under_the_latkit_namespace_only():
    """Installed, the folders are latkit.collector / latkit.predictor / latkit.agents. A module reached by its
    folder name as well (`import collector`) would exist twice, with two LatkitError classes: no import may use
    the bare names. Run from outside the checkout, so the folders are not on sys.path by accident."""
    code = ("import pkgutil, sys, importlib, latkit.collector as c, latkit.predictor as p, latkit.agents as a\n"
            "for pkg in (c, p, a):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "bare = sorted(m for m in sys.modules if m.split('.')[0] in ('collector', 'predictor', 'agents'))\n"
            "assert not bare, bare\n"
            "print(len([m for m in sys.modules if m.startswith('latkit.')]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 30


def imported_modules(path) -> list:
    """(line, module) of every import in the file, relative ones resolved against its package."""
    package = path.relative_to(ROOT).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [(node.lineno, f"{module}.{a.name}" if module else a.name) for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def test_no_collector_module_but_the_cli_imports_predictor():
    """Of the CLI's modules (collector/cli.py, collector/cli_*.py), only its predictor commands do."""
    files = [p for p in (ROOT / "collector").rglob("*.py") if p != ROOT / "collector" / "cli_predictor.py"]
    assert len(files) > 10
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in files for line, m in imported_modules(p)
           if m.startswith("latkit.predictor") or m.split(".")[0] == "predictor"]
    assert not bad, bad
    cli = imported_modules(ROOT / "collector" / "cli_predictor.py")
    assert any(m.startswith("latkit.predictor.") for _, m in cli)  # the walk does see predictor imports where they are


def test_the_architecture_page_names_only_files_that_exist():
    """docs/ARCHITECTURE.md points maintainers at files; a rename must not leave it pointing nowhere."""
    import re
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    paths = set(re.findall(r"`((?:agents|collector|predictor|datasets|scripts|tests|docs)/[\w./-]*)`", text))
    assert len(paths) > 15
    missing = sorted(p for p in paths if not (ROOT / p.split("`")[0]).exists())
    assert not missing, missing
