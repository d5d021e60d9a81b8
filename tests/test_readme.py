"""The README's benchmark tables are what the benchmark JSON renders to (scripts/render_readme.py), never
figures pasted by hand."""
import json
import subprocess
import sys

from conftest import ROOT


def test_readme_tables_match_the_benchmark_json():
    r = subprocess.run([sys.executable, "scripts/render_readme.py", "--check"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_transfer_table_has_every_published_task_beside_its_baselines():
    """Every task of published.json is a row of the README's transfer table, with the published numbers."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- table: scripts/bench_predictor.json#transfer -->")[1].split("<!-- end table -->")[0]
    rows = {line.split("|")[1].strip(): line for line in block.splitlines() if line.startswith("| ")}
    for task, paper in json.loads((ROOT / "datasets" / "help" / "published.json").read_text())["tasks"].items():
        assert task in rows, task
        for method in ("NASFLAT", "MultiPredict", "HELP"):
            assert f"{paper[method]:.3f}" in rows[task], (task, method)
