"""Predicting any ONNX model from the CLI (issue 25): a user's journey from measuring small real conv nets on
`local` to `predictor fit --space onnx`, `predict --file` with a standard deviation and an out-of-range flag,
`adapt` of the saved graph model, and the one-line errors of the wrong file for the wrong model."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

FAST = ["--repeats", "3", "--min-time", "0.01", "--max-time", "0.05", "--rounds", "1"]
# (width, depth, resolution): FLOPs from ~0.4 M to ~200 M, so latencies span two orders of magnitude
TRAIN = [(8, 1, 32), (8, 2, 32), (16, 1, 32), (16, 2, 32), (16, 3, 32), (32, 1, 32), (32, 2, 32), (8, 2, 64),
         (16, 1, 64), (16, 2, 64), (32, 1, 64), (32, 3, 64)]
UNSEEN = (24, 2, 48)
NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def convnet(width: int, depth: int, transpose: bool = False):
    torch.manual_seed(width * 10 + depth)
    layers = [torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU()]
    for _ in range(depth - 1):
        layers += [torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()]
    if transpose:  # a kernel type the training nets never have
        layers += [torch.nn.ConvTranspose2d(width, width, 2, stride=2)]
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(width, 10)).eval()


def write_onnx(path: Path, module, res: int, cache) -> Path:
    from latkit.collector import export
    a = export(module, (torch.randn(1, 3, res, res),), "onnx", arch=path.stem, cache_dir=cache)
    path.write_bytes(a.path.read_bytes())
    return path


@pytest.fixture(scope="module")
def user(tmp_path_factory, export_cache):
    """A user's folder: models/ (12 nets, measured on local into data/), new/ (one unseen net, one with a
    ConvTranspose), and an environment whose export cache is empty (the files are found through --models)."""
    root = tmp_path_factory.mktemp("graphcli")
    (root / "models").mkdir()
    (root / "new").mkdir()
    for w, d, r in TRAIN:
        write_onnx(root / "models" / f"c{w}x{d}_r{r}.onnx", convnet(w, d), r, export_cache)
    write_onnx(root / "new" / "unseen.onnx", convnet(UNSEEN[0], UNSEEN[1]), UNSEEN[2], export_cache)
    write_onnx(root / "new" / "odd.onnx", convnet(16, 1, transpose=True), 32, export_cache)
    env = dict(os.environ, LATKIT_CACHE=str(root / "empty-cache"))
    env.pop("LATKIT_DEBUG", None)
    user = {"root": root, "env": env}
    ok(user, "collect", "--models", "models", "--devices", "local", "--out", "data", "-q", *FAST)
    return user


def latkit(user, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=user["root"], env=user["env"])


def ok(user, *args, **kw) -> str:
    r = latkit(user, *args, **kw)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def refused(user, *args, code=2) -> str:
    """The command fails with exactly one `latkit: error:` line; that line."""
    r = latkit(user, *args)
    assert r.returncode == code and r.stderr.count("\n") == 1 and r.stderr.startswith("latkit: error: "), r.stderr
    return r.stderr


def measured(user, data="data") -> list:
    """(file name, latency_ms) of each of the dataset's ok rows."""
    from latkit.collector import Store
    rows = Store(user["root"] / data).read(["arch", "latency_ms", "status"]).to_pylist()
    return [(r["arch"], r["latency_ms"]) for r in rows if r["status"] == "ok"]


def tsv(text: str) -> list:
    lines = text.rstrip("\n").split("\n")
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"))) for line in lines[1:]]


@pytest.fixture(scope="module")
def fitted(user):
    """`predictor fit --space onnx` on the measured files: the saved model's path and the fit's JSON."""
    out = ok(user, "predictor", "fit", "--space", "onnx", "--data", "data", "--device", "local", "--models", "models",
             "--json", "fit.json", "--report", "fit-report", "-q")
    model = user["root"] / "data" / "models" / "onnx-local.latkit-model"
    assert f"saved {model.relative_to(user['root'])}" in out and model.is_file(), out
    assert out.startswith("onnx on local: kernels model of 12 graphs (ok rows without an .onnx file found: 0); "
                          "held-out 3 graphs: spearman=")
    return model, json.loads((user["root"] / "fit.json").read_text())


def test_fit_scores_held_out_graphs_and_saves_a_graph_model(user, fitted):
    from latkit.predictor.kernels import KernelAdditive
    from latkit.predictor.models import load
    model, m = fitted
    assert (m["graphs"], m["n_train"], m["n_test"], m["model"]) == (12, 9, 3, "kernels")
    assert {"spearman", "mape", "acc10"} <= set(m) and set(m["flops_linear"]) >= {"spearman", "mape"}
    assert m["mape"] < 200  # 9 graphs to learn from, timed in a few ms each: a ballpark, not a benchmark
    assert (user["root"] / "fit-report" / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert isinstance(load(model), KernelAdditive)


def test_predict_files_and_folders_with_std_and_the_out_of_range_flag(user, fitted):
    """One line per file (a file and a folder given), latency and std positive, in the ballpark of what was
    measured; the net with a kernel type never trained is flagged, the others are not."""
    model, _ = fitted
    rows = tsv(ok(user, "predictor", "predict", "--model", model, "--file", "new/unseen.onnx", "models", "new/odd.onnx",
                  "--std"))
    assert list(rows[0]) == ["file", "latency_ms", "std_ms", "flops", "kernels", "outside"]
    assert [Path(r["file"]).name for r in rows] == ["unseen.onnx", *sorted(p.name for p in
                                                                           (user["root"] / "models").iterdir()),
                                                    "odd.onnx"]
    assert all(float(r["latency_ms"]) > 0 and float(r["std_ms"]) > 0 and int(r["kernels"]) > 0 for r in rows)
    times = dict(measured(user))
    train = [r for r in rows if r["file"].startswith("models")]
    pred = np.array([float(r["latency_ms"]) for r in train])
    true = np.array([times[Path(r["file"]).name] for r in train])
    from scipy.stats import spearmanr
    assert spearmanr(pred, true).statistic > 0.8 and np.all((pred / true > 0.2) & (pred / true < 5)), (pred, true)
    # the unseen net, measured now: within a factor of 3 of the prediction
    unseen = json.loads(ok(user, "measure", "new/unseen.onnx", "--out", "unseen-data", "--json", *FAST))
    assert 1 / 3 < float(rows[0]["latency_ms"]) / unseen["latency_ms"] < 3, (rows[0], unseen["latency_ms"])
    assert rows[0]["outside"] == "" and all(r["outside"] == "" for r in train)
    assert rows[-1]["outside"] == "kernel types never trained: convtranspose"
    plain = tsv(ok(user, "predictor", "predict", "--model", model, "--space", "onnx", "--file", "new/unseen.onnx"))
    assert list(plain[0]) == ["file", "latency_ms", "flops", "kernels", "outside"]
    assert plain[0]["latency_ms"] == rows[0]["latency_ms"]


def test_a_bad_file_is_one_line_and_the_others_are_still_predicted(user, fitted):
    """Not ONNX, cut short, over the 1 GB bound: one line each naming the file, exit 1 beside good files (as
    collect), 2 when none could be read; a FIFO or a missing path is refused before anything is read."""
    model, _ = fitted
    root = user["root"]
    good = root / "models" / "c8x1_r32.onnx"
    (root / "bad").mkdir(exist_ok=True)
    (root / "bad" / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(4000))
    (root / "bad" / "cut.onnx").write_bytes(good.read_bytes()[:300])
    with open(root / "bad" / "huge.onnx", "wb") as f:  # sparse: past the 1 GB bound without writing it
        f.truncate((1 << 30) + 1)
    r = latkit(user, "predictor", "predict", "--model", model, "--file", good, "bad")
    assert r.returncode == 1  # as collect: some of the work failed
    assert [Path(x["file"]).name for x in tsv(r.stdout)] == ["c8x1_r32.onnx"]
    errors = r.stderr.splitlines()
    assert len(errors) == 3 and all(e.startswith("latkit: error: ") for e in errors), errors
    assert "cut.onnx is not an ONNX model" in r.stderr and "noise.onnx is not an ONNX model" in r.stderr
    assert "huge.onnx is 1073741825 bytes, more than the 1073741824 latkit reads" in r.stderr
    r = latkit(user, "predictor", "predict", "--model", model, "--file", "bad")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 3  # nothing could be read
    os.mkfifo(root / "bad" / "pipe.onnx")
    err = refused(user, "predictor", "predict", "--model", model, "--file", root / "bad" / "pipe.onnx")
    assert "is a FIFO, not a regular file" in err
    err = refused(user, "predictor", "predict", "--model", model, "--file", "missing.onnx")
    assert "cannot read --file missing.onnx" in err


def dynamic_batch(src: Path, dst: Path) -> Path:
    """A copy of an exported file whose first input and output dimension is the symbolic `batch`."""
    import onnx
    m = onnx.load(str(src), load_external_data=False)
    for v in (*m.graph.input, *m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    del m.graph.value_info[:]
    onnx.save(m, str(dst))
    return dst


def test_predict_json_and_batch_size(user, fitted):
    """--json: one JSON list, an object per file (std_ms with --std), the numbers the lines print; --batch-size
    fills a symbolic batch (4 images: 4 times the FLOPs, more time than 1) and leaves a fixed one as it is; a
    bad file is an object of its file and error, and one line on stderr; a model of a space refuses
    --batch-size in one line, and prints its archs as JSON too."""
    model, _ = fitted
    root = user["root"]
    fixed = root / "models" / "c16x2_r32.onnx"
    dyn = dynamic_batch(fixed, root / "new" / "dyn.onnx")

    def predicted(*extra, more=(), code=0):
        r = latkit(user, "predictor", "predict", "--model", model, "--file", "new/dyn.onnx", fixed, *more, *extra)
        assert r.returncode == code, r.stderr
        return json.loads(r.stdout), r.stderr

    one, _ = predicted("--json", "--std")
    assert [Path(r["file"]).name for r in one] == ["dyn.onnx", fixed.name]
    assert all(r["latency_ms"] > 0 and r["std_ms"] > 0 and r["kernels"] > 0 and r["onnx_nodes"] > 0 for r in one)
    assert [r["input_shape"] for r in one] == ["1x3x32x32", "1x3x32x32"]
    assert one[0]["latency_ms"] == one[1]["latency_ms"]  # batch 1: the same graph
    lines = tsv(ok(user, "predictor", "predict", "--model", model, "--file", "new/dyn.onnx", "--std"))
    assert float(lines[0]["latency_ms"]) == pytest.approx(one[0]["latency_ms"], rel=1e-5)
    assert float(lines[0]["std_ms"]) == pytest.approx(one[0]["std_ms"], rel=1e-2)
    four, _ = predicted("--json", "--batch-size", "4")
    assert "std_ms" not in four[0] and four[0]["input_shape"] == "4x3x32x32"
    assert four[0]["flops"] == pytest.approx(4 * one[0]["flops"], rel=1e-12)
    assert four[0]["latency_ms"] > 1.5 * one[0]["latency_ms"], (four, one)
    assert four[1]["input_shape"] == "1x3x32x32" and four[1]["latency_ms"] == one[1]["latency_ms"]  # fixed batch
    text = tsv(ok(user, "predictor", "predict", "--model", model, "--file", dyn, "--batch-size", "4"))
    assert float(text[0]["latency_ms"]) == pytest.approx(four[0]["latency_ms"], rel=1e-5)
    (root / "bad").mkdir(exist_ok=True)
    (root / "bad" / "short.onnx").write_bytes(fixed.read_bytes()[:200])
    rows, err = predicted("--json", more=[root / "bad" / "short.onnx"], code=1)
    assert [sorted(r) for r in rows[-1:]] == [["error", "file"]] and "is not an ONNX model" in rows[-1]["error"]
    assert err.count("\n") == 1 and err.startswith("latkit: error: ") and "short.onnx" in err
    assert "must be a whole number" in refused(user, "predictor", "predict", "--model", model, "--file", dyn,
                                               "--batch-size", "0")
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    from latkit.predictor.models import make_model
    arch_model = root / "nb201-json.latkit-model"
    archs = sample(get_space("nb201"), 12, "uniform", 0)
    make_model("ridge", "nb201").fit(archs, [1.0 + i for i in range(12)]).save(arch_model)
    err = refused(user, "predictor", "predict", "--model", arch_model, "--arch", NB201_ARCH, "--batch-size", "4")
    assert "--batch-size sets the symbolic batch of ONNX files" in err and "leave it out" in err
    got = json.loads(ok(user, "predictor", "predict", "--model", arch_model, "--arch", NB201_ARCH, archs[0], "--json"))
    assert [sorted(r) for r in got] == [["arch", "latency_ms"]] * 2 and got[0]["arch"] == NB201_ARCH
    assert got[1]["latency_ms"] == pytest.approx(float(tsv(ok(user, "predictor", "predict", "--model", arch_model,
                                                                  "--arch", archs[0]))[0]["latency_ms"]), rel=1e-5)


def test_the_wrong_file_for_the_wrong_model_says_what_to_do(user, fitted):
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    from latkit.predictor.models import make_model
    model, _ = fitted
    root = user["root"]
    arch_model = root / "nb201.latkit-model"
    archs = sample(get_space("nb201"), 12, "uniform", 0)
    make_model("ridge", "nb201").fit(archs, [1.0 + i for i in range(12)]).save(arch_model)
    (root / "archs.txt").write_text(NB201_ARCH + "\n")
    err = refused(user, "predictor", "predict", "--model", arch_model, "--file", "new/unseen.onnx")
    assert "new/unseen.onnx is an ONNX file, but" in err and "predicts arch strings of nb201" in err
    assert "latkit predictor fit --space onnx" in err
    assert "is a folder" in refused(user, "predictor", "predict", "--model", arch_model, "--file", "models")
    err = refused(user, "predictor", "predict", "--model", model, "--file", "archs.txt")
    assert "archs.txt is no .onnx file" in err and "graph model" in err
    assert "not arch strings" in refused(user, "predictor", "predict", "--model", model, "--arch", NB201_ARCH)
    assert "leave out --space" in refused(user, "predictor", "predict", "--model", model, "--space", "nb201",
                                          "--file", "new/unseen.onnx")
    # an arch model keeps its usage, --space now optional (the file names its space)
    out = ok(user, "predictor", "predict", "--model", arch_model, "--file", "archs.txt")
    assert out.startswith("arch\tlatency_ms\n" + NB201_ARCH + "\t")
    os.mkfifo(root / "archs.fifo")  # an arch list that is a FIFO or endless is refused, never read forever
    assert "is a FIFO, not a regular file" in refused(user, "predictor", "predict", "--model", arch_model, "--file",
                                                      "archs.fifo")
    with open(root / "huge.txt", "wb") as f:
        f.truncate(65 * 2 ** 20)  # sparse: 65 MB of zeros
    assert "is larger than 64 MB" in refused(user, "predictor", "predict", "--model", arch_model, "--file", "huge.txt")
    err = refused(user, "predictor", "adapt", "--model", arch_model, "--device", "local", "--file", "models")
    assert "predicts arch strings of nb201" in err and "leave out --model" in err
    err = refused(user, "predictor", "adapt", "--space", "onnx", "--device", "local")
    assert "--space onnx adapts a graph model: give --model" in err


def test_fit_errors_name_where_they_looked_and_what_to_do(user):
    err = refused(user, "predictor", "fit", "--space", "onnx", "--data", "data", "--device", "local")
    assert re.search(r"only 0 measured graphs of local in data have their \.onnx file \(12 ok rows without one; "
                     r"looked in the export cache \S*empty-cache\)", err), err
    assert "--models FOLDER" in err and "LATKIT_CACHE" in err
    assert "--budget applies to search spaces" in refused(user, "predictor", "fit", "--space", "onnx", "--data", "data",
                                                          "--device", "local", "--budget", "50")
    assert "--models applies to --space onnx" in refused(user, "predictor", "fit", "--space", "nb201", "--data", "data",
                                                         "--device", "local", "--models", "models")
    assert "is a model of ONNX graphs" in refused(user, "predictor", "fit", "--space", "nb201", "--data", "data",
                                                  "--device", "local", "--model", "kernels")
    assert "is a model of arch strings" in refused(user, "predictor", "fit", "--space", "onnx", "--data", "data",
                                                   "--device", "local", "--model", "ridge")
    assert "models path nowhere not found" in refused(user, "predictor", "fit", "--space", "onnx", "--data", "data",
                                                      "--device", "local", "--models", "nowhere")


def test_a_fifo_or_a_device_among_the_models_is_passed_over_not_read(user):
    """Hashing a FIFO would hang and /dev/zero never ends: in a --models folder only regular files count (as in
    collect --models), and such a file named alone is refused in one line."""
    root = user["root"]
    odd = root / "odd-models"
    odd.mkdir()
    os.mkfifo(odd / "pipe.onnx")
    os.symlink("/dev/zero", odd / "zero.onnx")
    for f in (root / "models").glob("*.onnx"):
        os.symlink(f, odd / f.name)
    args = ("predictor", "fit", "--space", "onnx", "--data", "data", "--device", "local", "--model", "flops", "--out",
            "odd.latkit-model", "-q", "--models")
    assert "flops model of 12 graphs" in ok(user, *args, "odd-models", timeout=120)
    assert "odd-models/pipe.onnx is a FIFO, not a regular file" in refused(user, *args, "odd-models/pipe.onnx")


def test_adapt_on_a_device_that_cannot_be_reached_says_so(user, fitted):
    """The device's own error and what was measured, exit 1 (as collect), not "no dataset at ..." of the empty
    --data the failed measuring left."""
    model, _ = fitted
    (user["root"] / "dead.toml").write_text('[devices.dead]\ntransport = "ssh"\nhost = "127.0.0.1"\nport = 1\n')
    err = refused(user, "predictor", "adapt", "--registry", "dead.toml", "--model", model, "--device", "dead",
                  "--file", "models", "--data", "dead-data", "-q", code=1)
    assert "dead: cannot reach dead at 127.0.0.1:1" in err and "0 measured" in err and "nothing adapted" in err


def test_adapt_measures_a_few_files_on_the_device_and_adapts_the_graph_model(user, fitted):
    """adapt --model: the files are measured into --data (a re-run times nothing again), the model as it was is
    scored on them, the adapted model is saved and predicts."""
    from latkit.predictor.models import load
    model, _ = fitted
    root = user["root"]
    (root / "few").mkdir()
    for name in ("c8x2_r32.onnx", "c16x2_r64.onnx", "c32x1_r32.onnx", "c32x3_r64.onnx"):
        shutil.copy(root / "models" / name, root / "few" / name)
    args = ("predictor", "adapt", "--model", model, "--device", "local", "--file", "few", "--data", "pi-data", "-q",
            *FAST)
    out = ok(user, *args)
    assert re.match(r"onnx on local: 4 graphs measured; the model as it was: mape \d+ %, spearman [-\d.]+; "
                    r"(recalibrated|fresh) \(cross-validated error ±\d+ %\); saved pi-data/models/"
                    r"onnx-local-adapt\.latkit-model\n$", out), out
    assert sorted(a for a, _ in measured(user, "pi-data")) == sorted(p.name for p in (root / "few").iterdir())
    adapted = load(root / "pi-data" / "models" / "onnx-local-adapt.latkit-model")
    assert np.all(adapted.predict([str(root / "new" / "unseen.onnx")]) > 0)
    ok(user, *args, "--out", "again.latkit-model")
    assert len(measured(user, "pi-data")) == 4  # stored rows reused, nothing timed twice
    assert not (root / "pi-data" / "_reference").exists()  # a few files: no reference checks
    assert "--n applies to arch spaces" in refused(user, "predictor", "adapt", "--model", model, "--device", "local",
                                                   "--file", "few", "--n", "10")
    assert "--model needs --file" in refused(user, "predictor", "adapt", "--model", model, "--device", "local")
    assert "--file applies with --model" in refused(user, "predictor", "adapt", "--device", "local", "--file", "few")
