"""Crafted `.latkit-model` files: each is refused by `latkit predictor predict` in one line, exit 2, within
seconds and bounded memory (zip bombs, lying headers, hostile .npy headers and JSON, out-of-range
hyperparameters, broken trees, special files); LightGBM's trees evaluated with numpy equal LightGBM's own
predictions; `fit`, `build` and `adapt --out` never overwrite a file that is not a model."""
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

import lightgbm
import numpy as np
import pytest

from conftest import ROOT
from latkit.collector.spaces import get_space
from latkit.predictor import trees
from latkit.predictor.encodings import encode
from latkit.predictor.ensemble import Ensemble
from latkit.predictor.models import make_model

ARCH = get_space("nb201").enumerate()[123]
OWN = ROOT / "datasets" / "local-cpu-nb201-fbnet"
MAX_RSS_MB = 400  # the CLI with numpy and scikit-learn loaded peaks at ~240 MB; the bombs below inflate to GBs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One small saved model of each kind the cases below tamper with."""
    rng = np.random.default_rng(0)
    archs = list(rng.choice(get_space("nb201").enumerate(), 120, replace=False))
    x = encode("nb201", archs, "features")
    y = np.exp(x @ rng.normal(0, 0.3, x.shape[1]) / np.sqrt(x.shape[1]))
    out = tmp_path_factory.mktemp("models")
    models = {"ridge": make_model("ridge", "nb201"), "gbdt": make_model("gbdt", "nb201").set_params(
        regressor__n_estimators=30), "rf": make_model("rf", "nb201").set_params(regressor__n_estimators=5),
        "mlp": make_model("mlp", "nb201").set_params(regressor__hidden_layer_sizes=(8,)),
        "gnn": make_model("gnn", "nb201").set_params(epochs=1, hidden=8),
        "ensemble": Ensemble(make_model("ridge", "nb201"), n_members=2)}
    for kind, m in models.items():
        m.fit(archs, y).save(out / f"{kind}.latkit-model")
    return {kind: out / f"{kind}.latkit-model" for kind in models}


# Runs the command given and writes its peak RSS (KB) to the file named first. Peak RSS survives exec on
# Linux, so a process forked from pytest would report pytest's; forked from this small launcher, it is its own.
LAUNCHER = ("import os, subprocess, sys\n"
            "p = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "p.returncode = os.waitstatus_to_exitcode(status)\n"
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
            "sys.exit(p.returncode)\n")


def run_cli(*args, timeout=60) -> tuple:
    """(exit code, stderr, seconds, peak RSS in MB) of `latkit *args` in a fresh process (its own process
    group, killed whole if it runs over `timeout`)."""
    with tempfile.TemporaryDirectory() as tmp:
        rss = os.path.join(tmp, "rss")
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-c", LAUNCHER, rss, sys.executable, "-m", "latkit.collector.cli",
                              *map(str, args)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            pytest.fail(f"latkit {' '.join(map(str, args))} ran over {timeout} s")
        return p.returncode, err, time.monotonic() - t0, int(open(rss).read()) / 1024


def members(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def rezip(src, dst, changes: dict, method=zipfile.ZIP_DEFLATED):
    """A copy of the model `src` at `dst`: `changes` maps a member to new bytes, or to None to drop it."""
    content = {**members(src), **changes}
    with zipfile.ZipFile(dst, "w", method) as z:
        for name, data in content.items():
            if data is not None:
                z.writestr(name, data)
    return dst


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=isinstance(arr, np.ndarray) and arr.dtype == object)
    return buf.getvalue()


def npy_raw(header: dict, data: bytes) -> bytes:
    """A .npy file with any header numpy's writer would refuse to write."""
    text = repr(header).encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def zeros_deflated(n_mib: int) -> bytes:
    """A raw deflate stream of n_mib MiB of zeros, ~1 KB per MiB: one fully flushed MiB repeated (the
    compressor forgets its history at a full flush, so each copy decodes alone)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return segment * n_mib + c.flush()


def raw_zip(entries) -> bytes:
    """A zip from (name, payload, method, declared inflated size, crc) entries, headers as given."""
    out, central = bytearray(), bytearray()
    for name, payload, method, size, crc in entries:
        n = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(payload), size,
                               len(n), 0, 0, 0, 0, 0, len(out)) + n
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(payload), size, len(n), 0)
        out += n + payload
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + end)


def meta_of(path) -> dict:
    return json.loads(members(path)["meta.json"])


def with_meta(src, dst, **changes):
    meta = meta_of(src)
    params = dict(meta["params"], **changes.pop("params", {}))
    return rezip(src, dst, {"meta.json": json.dumps(dict(meta, params=params, **changes)).encode()})


def tree_array(src, dst, name, edit):
    arr = np.load(io.BytesIO(members(src)[name]))
    edit(arr)
    return rezip(src, dst, {name: npy(arr)})


def bomb(files, dst, declared, actual_mib, n=1):
    """A model zip whose coef members inflate to `actual_mib` MiB each while their headers say `declared`
    bytes (CRC 0, which the real data does not have)."""
    meta = members(files["ridge"])["meta.json"]
    stream = zeros_deflated(actual_mib)
    entries = [("meta.json", meta, 0, len(meta), zlib.crc32(meta))]
    entries += [(f"coef{i}_.npy", stream, 8, declared, 0) for i in range(n)]
    dst.write_bytes(raw_zip(entries))
    return dst


def fifo(path):
    os.mkfifo(path)
    return path


def symlink(path, target):
    os.symlink(target, path)
    return path


def first_inner(src, name="trees_.left.npy") -> int:
    left = np.load(io.BytesIO(members(src)[name]))
    return int(np.flatnonzero(left != np.arange(len(left)))[0])


# name: (make the file from (files, path), what the one error line says)
CASES = {
    "zip bomb, honest header (2 MB -> 2 GiB)": (lambda f, p: bomb(f, p, 2047 << 20, 2047), "inflates to"),
    "zip bomb, 17 members (4 MB -> 4.3 GB)": (lambda f, p: bomb(f, p, 256 << 20, 256, n=17), "in all"),
    "zip bomb, header lies small": (lambda f, p: bomb(f, p, 1000, 2047), "Bad CRC-32 for file 'coef0_.npy'"),
    "header lies large": (lambda f, p: bomb(f, p, 64 << 20, 1), "coef0_.npy"),
    "5,000 members": (lambda f, p: rezip(f["ridge"], p, {f"x{i}_.npy": b"" for i in range(5000)}),
                      "more than a model file's 4096 members"),
    "unexpected member": (lambda f, p: rezip(f["ridge"], p, {"run.py": b"import os"}), "'run.py', which is no member"),
    "path traversal": (lambda f, p: rezip(f["ridge"], p, {"../../evil_.npy": npy(np.zeros(1))}), "which is no member"),
    "duplicate member": (lambda f, p: p.write_bytes(raw_zip([(n, d, 0, len(d), zlib.crc32(d)) for n, d in
                                                            [*members(f["ridge"]).items(), ("coef_.npy", b"")]])) and p,
                         "one member twice"),
    "bzip2 member": (lambda f, p: rezip(f["ridge"], p, {}, zipfile.ZIP_BZIP2), "stored or deflated"),
    "npy of objects": (lambda f, p: rezip(f["ridge"], p, {"coef_.npy": npy(np.array([print], dtype=object))}),
                       "coef_.npy: its dtype object is not a number type"),
    "npy header asks 10**12 elements": (lambda f, p: rezip(f["ridge"], p, {"coef_.npy": npy_raw(
        {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)}, bytes(8))}), "larger than any model array"),
    "npy shorter than its shape": (lambda f, p: rezip(f["ridge"], p, {"coef_.npy": npy_raw(
        {"descr": "<f8", "fortran_order": False, "shape": (100,)}, bytes(80))}), "not the 800 its shape"),
    "npy structured dtype": (lambda f, p: rezip(f["ridge"], p, {"coef_.npy": npy(np.zeros(3, [("a", "<f8")]))}),
                             "is not a number type"),
    "meta.json 50,000 deep": (lambda f, p: rezip(f["ridge"], p, {"meta.json": b"[" * 50000 + b"]" * 50000}),
                              "meta.json nests deeper"),
    "meta.json wrong types": (lambda f, p: rezip(f["ridge"], p, {"meta.json": json.dumps(
        dict(meta_of(f["ridge"]), params=[1, 2])).encode()}), "'params' is no JSON object"),
    "meta.json not JSON": (lambda f, p: rezip(f["ridge"], p, {"meta.json": b"\xff\xfe{"}), "meta.json is not JSON"),
    "gnn hidden=10**9": (lambda f, p: with_meta(f["gnn"], p, params={"hidden": 10 ** 9}),
                         "gnn parameter hidden=1000000000 is out of range"),
    "gnn torch_threads=10**9": (lambda f, p: with_meta(f["gnn"], p, params={"torch_threads": 10 ** 9}),
                                "torch_threads=1000000000 is out of range"),
    "mlp layer of 10**9": (lambda f, p: with_meta(f["mlp"], p, params={"regressor": dict(
        meta_of(f["mlp"])["params"]["regressor"], hidden_layer_sizes=[10 ** 9])}), "hidden_layer_sizes"),
    "ensemble n_members=10**9": (lambda f, p: with_meta(f["ensemble"], p, params={"n_members": 10 ** 9}),
                                 "n_members=1000000000 is out of range"),
    "tree child out of range": (lambda f, p: tree_array(f["gbdt"], p, "trees_.left.npy",
                                                        lambda a: a.__setitem__(first_inner(f["gbdt"]), 10 ** 6)),
                                "not a later node of its tree"),
    "tree cycle": (lambda f, p: tree_array(f["gbdt"], p, "trees_.right.npy",
                                           lambda a: a.__setitem__(first_inner(f["gbdt"]) + 1, 0)),
                   "not a later node of its tree"),
    "tree NaN threshold": (lambda f, p: tree_array(f["gbdt"], p, "trees_.threshold.npy",
                                                   lambda a: a.__setitem__(0, np.nan)), "NaN threshold"),
    "tree splits on feature 10**6": (lambda f, p: tree_array(f["gbdt"], p, "trees_.feature.npy",
                                                             lambda a: a.__setitem__(0, 10 ** 6)),
                                     "splits on a feature"),
    "forest depth_=10**12": (lambda f, p: rezip(f["rf"], p, {"depth_.npy": npy(np.int64(10 ** 12))}),
                             "is not the depth of its trees"),
    "ridge coef_ of the wrong length": (lambda f, p: rezip(f["ridge"], p, {"coef_.npy": npy(np.zeros(3))}),
                                        "coef_ and intercept_"),
    "LightGBM text member (format 2)": (lambda f, p: rezip(f["gbdt"], p, {
        "booster_.txt": b"tree\nnum_leaves=-7\n",
        "meta.json": json.dumps(dict(meta_of(f["gbdt"]), version=2)).encode()}),
                                        "LightGBM's text model (model format 2), which latkit no longer parses"),
    "truncated zip": (lambda f, p: p.write_bytes(f["gbdt"].read_bytes()[:len(f["gbdt"].read_bytes()) // 2]) and p,
                      "not a zip archive"),
    "empty file": (lambda f, p: p.write_bytes(b"") or p, "not a zip archive"),
    "FIFO": (lambda f, p: fifo(p), "is a FIFO, not a regular file"),
    "/dev/zero": (lambda f, p: "/dev/zero", "is a character device, not a regular file"),
    "symlink to /dev/zero": (lambda f, p: symlink(p, "/dev/zero"), "is a character device, not a regular file"),
    "folder": (lambda f, p: p.mkdir() or p, "is a folder, not a regular file"),
}


@pytest.mark.parametrize("case", CASES)
def test_crafted_model_file_is_one_line_exit_2(case, files, tmp_path):
    """`latkit predictor predict --model F`: exit 2, exactly one stderr line `latkit: error: ...` naming the
    file and what is wrong, in seconds, with bounded memory."""
    make, says = CASES[case]
    path = make(files, tmp_path / "crafted.latkit-model")
    code, err, seconds, rss_mb = run_cli("predictor", "predict", "--model", path, "--space", "nb201", "--arch", ARCH)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("latkit: error: "), err
    assert str(path) in lines[0] and says in lines[0], lines[0]
    assert seconds < 20 and rss_mb < MAX_RSS_MB, (seconds, rss_mb)


def test_models_round_trip_and_other_versions_warn(files, tmp_path):
    """Every kind above loads and predicts from the CLI; one written by another latkit version predicts with
    one warning line."""
    for kind, path in files.items():
        code, err, _, _ = run_cli("predictor", "predict", "--model", path, "--space", "nb201", "--arch", ARCH)
        assert code == 0 and err == "", (kind, err)
    old = with_meta(files["gbdt"], tmp_path / "old.latkit-model", latkit="0.0.1")
    code, err, _, _ = run_cli("predictor", "predict", "--model", old, "--space", "nb201", "--arch", ARCH)
    assert code == 0 and err.splitlines() == [
        f"latkit: warning: {old} was written by latkit 0.0.1, this is latkit {meta_of(files['gbdt'])['latkit']}; "
        "if its predictions look wrong, re-fit it with this version"], err


def lightgbm_data(seed):
    """500 nb201 archs' features (as the gbdt model sees them) and a latency-like target."""
    rng = np.random.default_rng(seed)
    archs = list(rng.choice(get_space("nb201").enumerate(), 2500, replace=False))
    x = encode("nb201", archs, "features").astype(np.float64)
    return x[:500], x @ rng.normal(0, 0.3, x.shape[1]) / 3 + rng.normal(0, 0.05, len(x)), x[500:]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_trees_equal_lightgbm(seed):
    """latkit's default LightGBM model, as arrays evaluated with numpy, predicts what LightGBM predicts."""
    x, y, test = lightgbm_data(seed)
    est = make_model("gbdt", "nb201", random_state=seed, n_jobs=1).regressor._make().fit(x, y[:500])
    got = trees.Boosted(trees.from_lightgbm(est.booster_), x.shape[1]).predict(test)
    assert np.allclose(got, est.booster_.predict(test), rtol=1e-9, atol=0)


def with_missing(seed: int) -> tuple:
    """lightgbm_data(seed) with NaNs in 10 % of the training inputs, NaNs in 20 % and zeros in 10 % of the test."""
    x, y, test = lightgbm_data(seed)
    rng = np.random.default_rng(seed)
    x, test = x.copy(), test.copy()
    x[rng.random(x.shape) < 0.1] = np.nan
    test[rng.random(test.shape) < 0.2] = np.nan
    test[rng.random(test.shape) < 0.1] = 0.0
    return x, y, test


@pytest.mark.parametrize("options", [{}, {"zero_as_missing": True}, {"use_missing": False}])
def test_numpy_trees_follow_lightgbm_on_missing_values(options):
    """NaN and zero inputs take the branch LightGBM takes, for each of its missing-value rules (NaN-trained,
    zero as missing, missing off)."""
    x, y, test = with_missing(3)
    booster = lightgbm.LGBMRegressor(n_estimators=100, num_leaves=15, min_child_samples=5, verbose=-1, n_jobs=1,
                                     **options).fit(x, y[:500]).booster_
    arrays = trees.from_lightgbm(booster)
    assert options.get("use_missing") is False or set(arrays["missing"].tolist()) > {0}  # NaN or zero rules used
    got = trees.Boosted(arrays, x.shape[1]).predict(test)
    assert np.allclose(got, booster.predict(test), rtol=1e-9, atol=0)


def test_joined_boosters_predict_each_one_alone(tmp_path):
    """Several boosters' trees joined into one Boosted give, per booster, exactly what that booster's own
    Boosted gives and what LightGBM gives, NaN and zero inputs included (a zero-as-missing booster among them)."""
    x, y, test = with_missing(4)
    boosters = [lightgbm.LGBMRegressor(n_estimators=n, num_leaves=leaves, min_child_samples=5, verbose=-1, n_jobs=1,
                                       random_state=i, **options).fit(x, y[:500]).booster_
                for i, (n, leaves, options) in enumerate([(60, 31, {}), (1, 2, {}), (40, 7, {"zero_as_missing": True}),
                                                          (80, 63, {"use_missing": False})])]
    arrays = [trees.from_lightgbm(b) for b in boosters]
    both, counts = trees.joined(arrays)
    assert counts == [60, 1, 40, 80]
    joint = trees.Boosted(both, x.shape[1])
    # several words of rows, one row, a partial word, rows repeated (evaluated once), one row thrice
    for rows in (test, test[:1], test[:70], np.r_[test[:70], test[5:9], test[:70]], np.repeat(test[:1], 3, 0)):
        got = joint.predict(rows, counts)
        assert got.shape == (4, len(rows))
        for g, a, b in zip(got, arrays, boosters):
            assert np.array_equal(g, trees.Boosted(a, x.shape[1]).predict(rows))
            assert np.allclose(g, b.predict(rows), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="groups of 100 trees for 181 trees"):
        joint.predict(test, [100])


def test_fit_out_never_overwrites_what_is_not_a_model(tmp_path, files):
    """`fit --out` over a user's file or a FIFO: one line, exit 2, the file untouched and nothing hangs;
    over a model file it writes the new model."""
    notes, pipe = tmp_path / "notes.txt", fifo(tmp_path / "pipe")
    notes.write_text("my notes")
    fit = ("predictor", "fit", "--data", OWN, "--space", "fbnet", "--device", "local", "--budget", 50, "--model",
           "ridge", "--out")
    for out, what in ((notes, "a file but no latkit model"), (pipe, "a FIFO")):
        code, err, _, _ = run_cli(*fit, out)
        assert code == 2 and err.splitlines() == [
            f"latkit: error: cannot write {out}: it is {what}, which latkit does not overwrite; give --out a new "
            "path or a .latkit-model file to replace"], err
    assert notes.read_text() == "my notes"
    model = tmp_path / "m.latkit-model"
    model.write_bytes(files["ridge"].read_bytes())
    code, err, _, _ = run_cli(*fit, model, timeout=300)
    from latkit.predictor.models import load
    assert code == 0 and load(model).space == "fbnet", err
    code, err, _, _ = run_cli("predictor", "predict", "--model", model, "--space", "fbnet", "--file", pipe)
    assert code == 2 and err.splitlines() == [
        f"latkit: error: --file {pipe} is a FIFO, not a regular file; give a file"], err


@pytest.mark.parametrize("command", [["build", "--space", "nb201", "--max-archs", "20", "--heldout", "5"],
                                     ["adapt", "--space", "nb201", "--n", "5"]])
def test_build_and_adapt_out_never_overwrite_what_is_not_a_model(tmp_path, command):
    """README: `fit`/`build`/`adapt --out` never overwrite a file that is not a model. Refused in one line before
    anything is measured: the file untouched, no dataset and no report folder made."""
    notes, data = tmp_path / "notes.txt", tmp_path / "d"
    notes.write_text("my notes")
    code, err, took, _ = run_cli("predictor", *command, "--device", "local", "--data", data, "--out", notes)
    assert code == 2 and err.splitlines() == [
        f"latkit: error: cannot write {notes}: it is a file but no latkit model, which latkit does not overwrite; "
        "give --out a new path or a .latkit-model file to replace"], err
    assert notes.read_text() == "my notes" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert took < 30  # nothing was measured
