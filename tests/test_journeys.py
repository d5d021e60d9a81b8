"""A new user's journeys, through the CLI: every file a command saves is loaded by the command that consumes it,
and what the user sees at each seam is checked (the README's promises, end to end)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latkit.collector import Store

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--repeats", "3", "--min-time", "0.01", "--max-time", "0.05", "--rounds", "1"]
NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def latkit(*args, cwd=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def ok(*args, **kw) -> str:
    r = latkit(*args, **kw)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def saved(stdout: str) -> list:
    """The files a command says it saved (`saved PATH`), each of which must exist."""
    paths = [Path(p.rstrip(",;")) for p in re.findall(r"saved (\S+)", stdout)]
    assert paths and all(p.is_file() for p in paths), stdout
    return paths


def predict_std(model: Path, space: str, arch: str) -> tuple:
    out = ok("predictor", "predict", "--model", model, "--space", space, "--arch", arch, "--std").splitlines()
    assert out[0] == "arch\tlatency_ms\tstd_ms" and out[1].split("\t")[0] == arch
    mean, std = map(float, out[1].split("\t")[1:])
    assert mean > 0 and std > 0
    return mean, std


def test_measure_force_times_again_and_a_stored_row_says_so(artifacts, tmp_path):
    """Without --force a known key is not timed again and the output says the row came from the dataset, with
    the stored values (session_reused included); --force times it again and appends a new row."""
    out, model = tmp_path / "d", artifacts["onnx"].path
    first = json.loads(ok("measure", model, "--out", out, "--json", *FAST))
    again = json.loads(ok("measure", model, "--out", out, "--json", *FAST))
    assert first["stored"] is False and again["stored"] is True
    assert again["started_at"] == first["started_at"] and again["session_reused"] == first["session_reused"] is not None
    assert again["round_session_reused"] == first["round_session_reused"]
    text = ok("measure", model, "--out", out, *FAST)
    assert "stored row of" in text and "not timed again; --force re-measures" in text
    forced = json.loads(ok("measure", model, "--out", out, "--json", "--force", *FAST))
    assert forced["stored"] is False and forced["started_at"] != first["started_at"]
    assert Store(out).read(["key"]).num_rows == 2


def test_stored_measurement_is_the_row(artifacts, tmp_path, fast):
    """A Measurement read back from the store gives the very row it came from."""
    from latkit.collector import measure
    from latkit.collector.api import stored_measurement
    m = measure(artifacts["onnx"], settings=fast, out=tmp_path / "d")
    store = Store(tmp_path / "d")
    row = store.read().to_pylist()[0]
    back = stored_measurement(store, m.job)
    assert back.stored and not m.stored
    assert back.to_row() == {k: row[k] for k in back.to_row()}


def test_collect_json_exit_code_of_done_devices(artifacts, tmp_path):
    models = tmp_path / "m"
    models.mkdir()
    shutil.copy(artifacts["onnx"].path, models / "a.onnx")
    r = latkit("collect", "--models", models, "--devices", "local", "--out", tmp_path / "d", "--json", *FAST)
    assert r.returncode == 0, r.stderr
    (dev,) = json.loads(r.stdout)["devices"]
    assert dev["status"] == "done" and dev["exit_code"] == 0


def test_fit_on_a_shipped_table_saves_in_the_current_folder(tmp_path):
    """The tables latkit ships live inside its package: fit's default output goes to ./models/ instead."""
    help_dir = ROOT / "datasets" / "help"
    before = sorted(p.name for p in help_dir.rglob("*"))
    out = ok("predictor", "fit", "--data", help_dir / "fbnet_latency.parquet", "--space", "fbnet", "--device",
             "raspi4", "--budget", "10", "--model", "ridge", cwd=tmp_path)
    (model,) = saved(out.replace("saved ", f"saved {tmp_path}/"))
    assert model == tmp_path / "models" / "fbnet-raspi4.latkit-model"
    assert sorted(p.name for p in help_dir.rglob("*")) == before


def test_journey_register_collect_fit_build_adapt_transfer_predict(fleet, tmp_path):
    """The README's path for a new device, one command after another on a real sshd device."""
    d, reg, data = fleet[0], tmp_path / "devices.toml", tmp_path / "my-data"
    r = ["--registry", reg]
    ok("device", "add", "board", "--host", d.host, "--port", d.port, "--user", d.user, "--key", d.key, "--python",
       d.python, "--workdir", d.workdir, "--trust-host-key", "--lease", f"{d.dir}/journey.lease", *r)
    probe = json.loads(ok("device", "probe", "board", *r))
    assert "onnxruntime" in probe["runtimes"]

    report = json.loads(ok("collect", "--space", "nb201", "--n", "24", "--sampler", "balanced", "--devices", "board",
                           "--out", data, "--json", *FAST, *r))
    assert report["ok"] and report["devices"][0]["measured"] == 24 and report["devices"][0]["exit_code"] == 0
    (group,) = json.loads(ok("data", "show", data, "--json"))
    assert (group["device"], group["space"], group["ok"]) == ("board", "nb201", 24)
    assert "wrote" in ok("data", "card", data) and "board" in (data / "README.md").read_text()
    plots = ok("data", "plot", data).split()
    assert plots and all(Path(p).stat().st_size > 1000 for p in plots)

    fit = ok("predictor", "fit", "--data", data, "--space", "nb201", "--device", "board", "--budget", "10",
             "--model", "ridge")
    assert saved(fit) == [data / "models" / "nb201-board.latkit-model"]
    predict_std(data / "models" / "nb201-board.latkit-model", "nb201", NB201_ARCH)

    build = ok("predictor", "build", "--space", "nb201", "--device", "board", "--target-acc", "0.99", "--max-archs",
               "20", "--heldout", "5", "--batch", "5", "--data", data, "--out", tmp_path / "built.latkit-model",
               *FAST, *r)
    assert saved(build) == [tmp_path / "built.latkit-model"]
    predict_std(tmp_path / "built.latkit-model", "nb201", NB201_ARCH)

    adapt = ok("predictor", "adapt", "--device", "board", "--space", "nb201", "--n", "6", "--sources", data,
               "--data", data, *FAST, *r)
    (adapted,) = saved(adapt)
    assert adapted == data / "models" / "nb201-board-adapt.latkit-model"
    predict_std(adapted, "nb201", NB201_ARCH)
    tsv = ok("predictor", "predict", "--model", adapted, "--space", "nb201", "--all").splitlines()
    assert len(tsv) == 1 + 15625

    help_fbnet = ROOT / "datasets" / "help" / "fbnet_latency.parquet"
    out = tmp_path / "transferred"
    t = ok("predictor", "transfer", "--data", help_fbnet, "--space", "fbnet", "--source", "1080ti_1,silver_4114",
           "--target", "raspi4,pixel3", "--target-samples", "5", "--source-samples", "60", "--seeds", "1",
           "--no-gnn", "--out", out)
    assert saved(t) == [out / "fbnet-raspi4.latkit-model", out / "fbnet-pixel3.latkit-model"]
    assert sorted(p.name for p in out.iterdir()) == ["fbnet-pixel3.latkit-model", "fbnet-raspi4.latkit-model"]
    fbnet_arch = ",".join(["k3_e1"] * 22)
    for model in saved(t):
        predict_std(model, "fbnet", fbnet_arch)
    wrong = latkit("predictor", "predict", "--model", out / "fbnet-raspi4.latkit-model", "--space", "nb201",
                   "--arch", NB201_ARCH)
    assert wrong.returncode == 2 and "predicts fbnet, not nb201; give --space fbnet" in wrong.stderr


def test_std_of_a_single_model_says_what_gives_one(tmp_path):
    """A model saved from Python without a spread: --std names what does give one (no advice loop)."""
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    from latkit.predictor.ensemble import Ensemble
    from latkit.predictor.models import make_model
    archs = sample(get_space("nb201"), 30, "uniform", 0)
    y = [1.0 + i / 10 for i in range(len(archs))]
    single, bagged = tmp_path / "single.latkit-model", tmp_path / "bagged.latkit-model"
    make_model("ridge", "nb201").fit(archs, y).save(single)
    Ensemble(make_model("ridge", "nb201")).fit(archs, y).save(bagged)
    r = latkit("predictor", "predict", "--model", single, "--space", "nb201", "--arch", archs[0], "--std")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "without a spread" in r.stderr and "Ensemble(model)" in r.stderr and "re-fit" not in r.stderr
    predict_std(bagged, "nb201", archs[0])


def test_demo(tmp_path):
    """The README's first command after its setup step: doctor, timing, a collection, a fit, a saved model and a
    prediction with its spread, all on `local`."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--n", "30", "--out", tmp_path / "d"],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "mobilenet_ish_128" in r.stdout and "surrogate" in r.stdout and "std_ms" in r.stdout
    assert (tmp_path / "d" / "models" / "nb201-local.latkit-model").is_file()
    assert Store(tmp_path / "d").read(["key"]).num_rows == 30 + 6
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--n", "30", "--out", tmp_path / "d"],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert Store(tmp_path / "d").read(["key"]).num_rows == 30 + 6  # its docstring: re-running resumes
