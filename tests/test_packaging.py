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

HEAVY = ("pandas", "scipy", "sklearn", "matplotlib", "onnx", "onnxruntime", "torch", "lightgbm", "onnxscript", "polars")
MEASURE_ONLY_MB = 450  # `pip install latkit onnxruntime` on disk (401 MB on Linux x86-64, CPython 3.11)


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
    assert core == {"numpy", "pyarrow", "psutil", "rich", "paramiko", "tomlkit", "shtab"}, core
    extras = set(meta.get_all("Provides-Extra"))
    assert {"onnxruntime", "export", "tflite", "predict", "plot", "compact", "all"} <= extras


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


def test_a_measure_only_install_is_small_and_measures(tmp_path):
    """`pip install latkit onnxruntime` into a fresh venv (pip's cache makes it ~30 s) stays under MEASURE_ONLY_MB
    on disk (it was 581 MB with polars in the core: polars is the compact extra now), and its `latkit measure`
    times a model and stores the row."""
    import onnx
    from onnx import TensorProto, helper
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in "xy"]
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", io[:1], io[1:]),
                                opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "relu.onnx")
    env = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)  # our venv has no pip: ensurepip from the base
    r = subprocess.run([base, "-m", "venv", str(env)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(ROOT), "onnxruntime"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    size_mb = int(subprocess.run(["du", "-sm", str(env)], capture_output=True, text=True).stdout.split()[0])
    assert size_mb < MEASURE_ONLY_MB, f"measure-only install is {size_mb} MB"
    r = subprocess.run([str(env / "bin" / "latkit"), "measure", "relu.onnx", "--min-time", "0.05", "--max-time", "0.2",
                        "--out", "data"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=dict(os.environ, HOME=str(tmp_path)))
    assert r.returncode == 0 and "relu.onnx on local/onnxruntime" in r.stdout, r.stderr
    r = subprocess.run([str(env / "bin" / "latkit"), "data", "show", "data", "--json"], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env=dict(os.environ, HOME=str(tmp_path)))
    assert r.returncode == 0 and '"ok": 1' in r.stdout, r.stderr
