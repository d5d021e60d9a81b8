"""What `pip install latkit` gives: the three folders under one `latkit` namespace, a small core that measures,
and one line naming the extra when a command needs what the core lacks."""
import os
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser

import pytest

from conftest import ROOT

HEAVY = ("pandas", "scipy", "sklearn", "matplotlib", "onnx", "onnxruntime", "torch", "lightgbm", "onnxscript")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                        str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (path,) = out.glob("latkit-*.whl")
    return path


def test_the_wheel_installs_under_one_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"latkit", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for module in ("latkit/agents/agent.py", "latkit/collector/cli.py", "latkit/collector/transports/ssh.py",
                   "latkit/collector/spaces/ofa.py", "latkit/predictor/transfer.py"):
        assert module in names
    for table in ("latkit/help/nb201_latency.parquet", "latkit/help/fbnet_latency.parquet", "latkit/help/LICENSE"):
        assert table in names  # transfer's source devices, with their licence
    assert "latkit/__init__.py" not in names  # a namespace package: other latkit-* distributions may add to it


def test_the_core_requires_no_predictor_plot_or_export_library(wheel):
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(
        next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))).decode())
    requires = meta.get_all("Requires-Dist")
    core = {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in requires if "extra ==" not in r}
    assert core == {"numpy", "pyarrow", "psutil", "rich", "paramiko", "tomlkit", "polars", "shtab"}, core
    extras = set(meta.get_all("Provides-Extra"))
    assert {"onnxruntime", "export", "tflite", "predict", "plot", "all"} <= extras


def run_installed(wheel, tmp_path, *argv):
    """`latkit ARGV` from the installed wheel alone (no checkout on sys.path, no editable finder: python -S),
    with the heavy optional libraries made unimportable, as on a measure-only host."""
    target = tmp_path / "site"
    if not target.exists():
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                            str(wheel)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    code = ("import sys\n"
            "class Absent:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {HEAVY!r}:\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Absent())\n"
            "from latkit.collector.cli import main\n"
            f"rc = main({list(map(str, argv))!r})\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('collector', 'predictor', 'agents')]\n"
            "sys.exit(rc)\n")
    env = dict(os.environ, PYTHONPATH=f"{target}{os.pathsep}{sysconfig.get_paths()['purelib']}",
               HOME=str(tmp_path))
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)


def test_a_measure_only_install_shows_data_and_names_the_extra_it_lacks(wheel, tmp_path):
    r = run_installed(wheel, tmp_path, "data", "show", ROOT / "datasets" / "local-cpu-nb201-fbnet")
    assert r.returncode == 0, r.stderr
    assert "nb201" in r.stdout and "local" in r.stdout
    help_dir = subprocess.run([sys.executable, "-S", "-c", "from latkit.collector.dataset import HELP_DIR; "
                               "print(HELP_DIR)"], capture_output=True, text=True, cwd=tmp_path,
                              env=dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}"
                                                             f"{sysconfig.get_paths()['purelib']}"))
    assert help_dir.stdout.strip() == str(tmp_path / "site" / "latkit" / "help"), help_dir.stderr
    assert (tmp_path / "site" / "latkit" / "help" / "nb201_latency.parquet").is_file()  # transfer's sources
    r = run_installed(wheel, tmp_path, "device", "list")
    assert r.returncode == 0 and "local" in r.stdout, r.stderr
    r = run_installed(wheel, tmp_path, "predictor", "fit", "--data", ROOT / "datasets" / "local-cpu-nb201-fbnet",
                      "--space", "nb201", "--device", "local")
    assert r.returncode == 2, r.stderr
    line, = r.stderr.strip().splitlines()
    assert line.startswith("latkit: error: latkit predictor fit needs ") and "pip install 'latkit[" in line, line
    r = run_installed(wheel, tmp_path, "data", "plot", ROOT / "datasets" / "local-cpu-nb201-fbnet",
                      "--out", tmp_path / "plots")
    line, = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "pip install 'latkit[plot]'" in line, r.stderr
