"""Security and bad input: the loopback fleet trusts only keys it made in private dirs; model files are data."""
import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import zipfile
from importlib.metadata import version

import numpy as np
import paramiko
import pytest

from latkit.collector import LatkitError
from latkit.collector.loopback import _keygen, new_fleet_dir, start_fleet, stop_fleet
from latkit.collector.spaces import get_space
from conftest import ROOT
from latkit.predictor.encodings import encode
from latkit.predictor.modelfile import FORMAT_VERSION
from latkit.predictor.models import MODELS, load, make_model

# -- the loopback fleet -----------------------------------------------------------------------------------


def login(dev, key) -> str:
    """Log in to a fleet device with `key` (nothing else: no agent, no ~/.ssh keys); returns `id -un`."""
    ssh = paramiko.SSHClient()
    ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        ssh.connect(dev.host, dev.port, dev.user, key_filename=str(key), look_for_keys=False, allow_agent=False,
                    timeout=10)
        return ssh.exec_command("id -un")[1].read().decode().strip()
    finally:
        ssh.close()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_planted_key_is_never_authorized(tmp_path):
    """A key pair left in the fleet's own dir (client_key and an authorized_keys naming it) is replaced, not
    trusted; the fleet's fresh key logs in through sshd with StrictModes yes; keys 0600, dirs 0700."""
    base = new_fleet_dir()
    planted = tmp_path / "planted"
    _keygen(planted)
    shutil.copy(planted, base / "client_key")
    shutil.copy(f"{planted}.pub", base / "client_key.pub")
    (base / "dev0").mkdir(mode=0o700)
    shutil.copy(f"{planted}.pub", base / "dev0" / "authorized_keys")
    try:
        dev, = start_fleet(base, [sys.executable])
        assert "StrictModes yes" in (base / "dev0" / "sshd_config").read_text().splitlines()
        with pytest.raises(paramiko.AuthenticationException):
            login(dev, planted)
        assert login(dev, dev.key) == dev.user
        assert (base / "client_key").read_bytes() != planted.read_bytes()
        assert mode(base) == mode(base / "dev0") == 0o700
        for key in (base / "client_key", base / "dev0" / "ssh_host_ed25519_key", base / "dev0" / "authorized_keys"):
            assert mode(key) == 0o600, key
    finally:
        stop_fleet(base, remove=True)
    assert not base.exists()


@pytest.mark.parametrize("case", ["group-writable", "foreign-owned", "below /tmp"])
def test_untrustworthy_fleet_dir_refused_in_one_line(case, tmp_path):
    """`scripts/fleet up --dir` refuses a dir someone else could have planted keys in, before touching it."""
    base = tmp_path / "fleet" if case == "below /tmp" else new_fleet_dir()
    base.mkdir(exist_ok=True)
    _keygen(base / "client_key")
    planted = (base / "client_key").read_bytes()
    if case == "group-writable":
        os.chmod(base, 0o770)
    elif case == "foreign-owned":
        os.chown(base, 65534, 65534)
    try:
        r = subprocess.run([sys.executable, "scripts/fleet.py", "up", "--n", "1", "--dir", str(base)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"fleet: error: refusing fleet dir {base}: ") and "--dir" in lines[0]
        expect = {"group-writable": "it is writable by group or others (mode 0770)",
                  "foreign-owned": "it is owned by uid 65534",
                  "below /tmp": "/tmp above it is writable by group or others (mode 1777)"}[case]
        assert expect in lines[0]
        assert (base / "client_key").read_bytes() == planted and not (base / "fleet.json").exists()
    finally:
        if case != "below /tmp":
            shutil.rmtree(base)


# -- model files are data ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nb201():
    """300 nb201 archs and synthetic latencies (log-linear in the features, with noise)."""
    rng = np.random.default_rng(0)
    archs = list(rng.choice(get_space("nb201").enumerate(), 300, replace=False))
    x = encode("nb201", archs, "features")
    return archs, np.exp(x @ rng.normal(0, 0.3, x.shape[1]) / np.sqrt(x.shape[1]) + rng.normal(0, 0.05, len(x)))


@pytest.fixture(scope="module")
def ridge_file(nb201, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "ridge.latkit-model"
    make_model("ridge", "nb201").fit(nb201[0][:100], nb201[1][:100]).save(path)
    return path


@pytest.mark.parametrize("kind", MODELS)
def test_every_model_round_trips_exactly(kind, nb201, tmp_path):
    """Saved and loaded, every kind predicts bit for bit what it did, with the same hyperparameters; its stored
    arrays predict what the library's own estimator does; the file is JSON, .npy and text members only, and
    names the latkit version that wrote it."""
    archs, y = nb201
    m = make_model(kind, "nb201", random_state=3)
    if kind == "gnn":
        m.set_params(epochs=5)
    m.fit(archs[:150], y[:150])
    pred = m.predict(archs[150:])
    m.save(tmp_path / "m.latkit-model")
    back = load(tmp_path / "m.latkit-model")
    assert type(back) is type(m) and repr(back) == repr(m) and np.array_equal(back.predict(archs[150:]), pred)
    with zipfile.ZipFile(tmp_path / "m.latkit-model") as z:
        meta = json.loads(z.read("meta.json"))
        assert meta["version"] == FORMAT_VERSION and meta["model"] == kind and meta["latkit"] == version("latkit")
        assert {n.rsplit(".", 1)[1] for n in z.namelist()} <= {"json", "npy"}
    if kind != "gnn":  # the exported arrays (numpy walk of the forest, MLP layers, ...) match the estimator
        reg = m.regressor_
        train = (encode("nb201", archs[:150], "features") - reg.mean_) / reg.scale_
        test = (encode("nb201", archs[150:], "features") - reg.mean_) / reg.scale_
        est = reg._make().fit(train, np.log(y[:150]))
        reg._export(est)
        assert np.allclose(reg._predict_scaled(test), est.predict(test), rtol=1e-12, atol=1e-12)


def rezip(src, dst, members: dict):
    """A copy of the zip `src` at `dst` with `members` (name -> bytes) added or replaced."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for name in a.namelist():
            if name not in members:
                b.writestr(name, a.read(name))
        for name, data in members.items():
            b.writestr(name, data)
    return dst


class Touch:
    """Unpickled, it creates the file `path`: a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def object_npy(obj) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([obj], dtype=object), allow_pickle=True)
    return buf.getvalue()


def refused(path, match):
    with pytest.raises(LatkitError, match=match) as e:
        load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_pickle_payloads_run_nothing(ridge_file, tmp_path):
    """An old-style pickled model file, a pickle disguised as a zip member, and an object array in a .npy
    member are refused in one line; the code they carry never runs."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Touch(tmp_path / "potent")))
    np.load(io.BytesIO(object_npy(Touch(tmp_path / "potent.npy"))), allow_pickle=True)
    assert (tmp_path / "potent").exists() and (tmp_path / "potent.npy").exists()  # the payloads work
    old = tmp_path / "old.latkit-model"
    old.write_bytes(pickle.dumps(Touch(marker)))
    refused(old, r"is an old pickle-based model file, which latkit no longer reads \(it could run code\); "
                 r"re-fit with latkit predictor fit")
    old.write_bytes(pickle.dumps(Touch(marker), protocol=0))
    refused(old, "is not a valid latkit model: it is not a zip archive; re-fit it or get the file from its author")
    refused(rezip(ridge_file, tmp_path / "obj.latkit-model", {"coef_.npy": object_npy(Touch(marker))}),
            "is not a valid latkit model: coef_.npy: its dtype object is not a number type")
    refused(rezip(ridge_file, tmp_path / "raw.latkit-model", {"coef_.npy": pickle.dumps(Touch(marker))}),
            "is not a valid latkit model: coef_.npy: its .npy header does not parse")
    old.write_bytes(pickle.dumps(Touch(marker)))
    r = subprocess.run([sys.executable, "-m", "latkit.collector.cli", "predictor", "predict", "--model", str(old), "--space",
                        "nb201", "--all"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "old pickle-based model file" in r.stderr
    assert not marker.exists()


def test_path_traversal_and_stray_members_refused(ridge_file, tmp_path):
    for name in ("../../evil_.npy", "/tmp/evil_.npy", "sub/coef_.npy", "__class__.npy", "run.py"):
        refused(rezip(ridge_file, tmp_path / "t.latkit-model", {name: b"x"}),
                f"holds '{name}', which is no member of a model file")
    assert not (tmp_path.parent / "evil_.npy").exists()


def test_bad_metadata_and_future_versions_refused(ridge_file, tmp_path):
    meta = json.loads(zipfile.ZipFile(ridge_file).read("meta.json"))
    future = rezip(ridge_file, tmp_path / "f.latkit-model", {"meta.json": json.dumps(dict(meta, version=4))})
    refused(future, "is model format 4, newer than this latkit reads \\(3\\); upgrade latkit, or re-fit")
    old = rezip(ridge_file, tmp_path / "o.latkit-model", {"meta.json": json.dumps(dict(meta, version=1))})
    refused(old, "is model format 1, from a latkit whose models were not yet scikit-learn estimators; re-fit it")
    for bad, match in ((dict(meta, model="xgb"), "unknown model kind 'xgb'"),
                       (dict(meta, version="1"), "format version '1' is not one latkit ever wrote"),
                       (dict(meta, format="onnx"), "does not describe a latkit model"),
                       (dict(meta, params={"space": "nb201", "os": "system"}),
                        "the ridge parameter 'os', which latkit does not know"),
                       (dict(meta, params={"space": "nb201", "regressor": "os"}), "ridge parameters are no JSON"),
                       (dict(meta, params={"space": "nb201", "regressor": {"alphas": [1], "os": 1}}),
                        "the ridge parameter 'os', which latkit does not know")):
        refused(rezip(ridge_file, tmp_path / "b.latkit-model", {"meta.json": json.dumps(bad)}), match)
    with zipfile.ZipFile(ridge_file) as z, zipfile.ZipFile(tmp_path / "gbdt.latkit-model", "w") as out:
        out.writestr("meta.json", json.dumps(dict(meta, model="gbdt", params={"space": "nb201"})))
        out.writestr("booster_.txt", "not a LightGBM model")  # format 2 kept LightGBM's text
        for name in ("mean_.npy", "scale_.npy"):
            out.writestr(name, z.read(name))
    refused(tmp_path / "gbdt.latkit-model", "booster_.txt is LightGBM's text model \\(model format 2\\), which latkit "
                                             "no longer parses; re-fit it")
    with zipfile.ZipFile(tmp_path / "gnn.latkit-model", "w") as out:
        out.writestr("meta.json", json.dumps(dict(meta, model="gnn", params={"space": "nb201"})))
    refused(tmp_path / "gnn.latkit-model", "lacks learned state 'net_'")
