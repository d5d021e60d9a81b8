"""Bad input, as a new user or a script gives it: every subcommand answers with one line on stderr naming
what was wrong, exit 2 when the command was wrong and 1 when a device failed, never a traceback, and fast
(refused before any exporting, timing or training)."""
import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latkit.collector import dataset
from latkit.collector.spaces import get_space
from latkit.predictor.models import make_model
from conftest import ROOT


def latkit(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def latency_table(path, devices=("d1", "d2"), n=40):
    archs = get_space("nb201").sample(n, np.random.default_rng(0))
    rows = [(a, d, 1.0 + i / n + k) for i, a in enumerate(archs) for k, d in enumerate(devices)]
    pq.write_table(pa.table({"space": ["nb201"] * len(rows), "arch": [r[0] for r in rows],
                             "device": [r[1] for r in rows], "latency_ms": [r[2] for r in rows]}), path)


@pytest.fixture(scope="module")
def w(tmp_path_factory, artifacts):
    """A folder of things to get wrong: a model, registries, datasets and tables, each broken in one way."""
    w = tmp_path_factory.mktemp("bad")
    shutil.copy(artifacts["onnx"].path, w / "m.onnx")
    shutil.copy(artifacts["torchscript"].path, w / "ts.pt")  # a TorchScript file: no input shapes in it
    (w / "model.txt").write_text("not a model")
    (w / "afile").write_text("a file, not a folder")
    (w / "garbage.latkit-model").write_bytes(b"PK\x03\x04 not a zip at all")
    (w / "empty").mkdir()
    local = f'[devices.loc]\ntransport = "local"\nworkdir = "{w}/wd"\nlease = "{w}/lease"\n'
    (w / "reg.toml").write_text(local + f'[devices.nolease]\ntransport = "local"\nlease = "{w}/no/such/dir/lease"\n')
    (w / "badtoml.toml").write_text("[devices.x\nhost = ")
    (w / "unknownkey.toml").write_text(local + "colour = \"blue\"\n")
    (w / "badport.toml").write_text('[devices.pi]\ntransport = "ssh"\nhost = "192.0.2.7"\nport = "twenty-two"\n')
    (w / "notables.toml").write_text("devices = 3\n")
    (w / "ssh_config").write_text("Host pc\n  ProxyCommand nc %h %p\nHost viaghost\n  HostName 127.0.0.9\n"
                                  "  ProxyJump ghost.invalid\n")
    latency_table(w / "table.parquet")
    pq.write_table(pa.table({"space": ["nb201"], "arch": ["x"], "device": ["d1"], "latency_ms": ["fast"]}),
                   w / "textlatency.parquet")
    (w / "notparquet.parquet").write_text("hello")
    (w / "oldlayout" / "device=d1" / "space=nb201").mkdir(parents=True)
    dataset.import_help(w / "table.parquet", w / "data")
    dataset.import_help(w / "table.parquet", w / "refonly" / "_reference")  # rows in the side table only, as a
    # collect interrupted after timing the reference leaves its --out
    for side in ("_reference", "_rounds"):  # and one stopped in its first window, before any model's last round
        dataset.import_help(w / "table.parquet", w / "roundsonly" / side)
    archs = get_space("nb201").sample(30, np.random.default_rng(1))  # a real predictor file, given where data goes
    (w / "data" / "models").mkdir()
    make_model("ridge", "nb201").fit(archs, np.linspace(1, 2, 30)).save(w / "data" / "models" / "nb201-d1.latkit-model")
    shutil.copy(w / "data" / "models" / "nb201-d1.latkit-model", w / "pred.latkit-model")
    (w / "pred.tsv").write_text("arch\tlatency_ms\n" + "".join(f"{a}\t1.5\n" for a in archs[:3]))  # predict's output
    for name, what in (("foreign", "foreign"), ("notpq", "text"), ("devjson", "json")):
        shutil.copytree(w / "data", w / name)
        part = w / name / "data" / "device_=d1" / "space_=nb201"
        if what == "foreign":
            pq.write_table(pa.table({"x": [1, 2]}), part / "other-tool.parquet")
        elif what == "text":
            (part / "notes.parquet").write_text("written by hand")
        else:
            (w / name / "devices").mkdir()
            (w / name / "devices" / "d1-0123.json").write_text("{not json")
    return w


M = "{w}/m.onnx --registry {w}/reg.toml --device loc --out {w}/out"      # measure: a good model on a good device
C = "--registry {w}/reg.toml --devices loc --out {w}/out"                 # collect: a good device
P = "--model {w}/garbage.latkit-model --space nb201"                      # predict
F = "--data {w}/table.parquet --space nb201 --device d1"                  # fit
T = "--data {w}/table.parquet --space nb201 --source d1 --target d2"      # transfer

CASES = [
    # (id, arguments, exit code, words the one line must hold)
    ("unknown-command", "frobnicate", 2, "unknown command 'frobnicate'; choose one of measure, collect"),
    ("unknown-subcommand", "data frobnicate", 2, "unknown command 'data frobnicate'; choose one of show, card"),
    ("command-of-a-group", "predict --model x", 2, "unknown command 'predict'; did you mean 'predictor predict'?"),
    ("command-of-groups", "show", 2, "unknown command 'show'; did you mean 'device show' or 'data show'?"),
    ("measure-no-model", "measure", 2, "required: model"),
    ("threads-0", f"measure {M} --threads 0", 2, "argument --threads: must be a whole number >= 1"),
    ("threads-text", f"measure {M} --threads abc", 2, "argument --threads: must be a whole number"),
    ("cores-text", f"measure {M} --cores abc", 2, "argument --cores: takes CPU ids"),
    ("cores-negative", f"measure {M} --cores -1", 2, "argument --cores: takes CPU ids"),
    ("batch-negative", f"measure {M} --batch-size -1", 2, "argument --batch-size: must be a whole number >= 1"),
    ("batch-absurd", f"measure {M} --batch-size 100000", 2, "argument --batch-size: must be a whole number"),
    ("repeats-0", f"measure {M} --repeats 0", 2, "argument --repeats: must be a whole number >= 1"),
    ("repeats-negative", f"measure {M} --repeats -5", 2, "argument --repeats"),
    ("repeats-fraction", f"measure {M} --repeats 2.5", 2, "argument --repeats"),
    ("ci-target-0", f"measure {M} --ci-target 0", 2, "argument --ci-target: must be a finite number > 0"),
    ("ci-target-nan", f"measure {M} --ci-target nan", 2, "argument --ci-target: must be a finite number"),
    ("ci-target-inf", f"measure {M} --ci-target inf", 2, "argument --ci-target"),
    ("min-time-negative", f"measure {M} --min-time -1", 2, "argument --min-time: must be a finite number >= 0"),
    ("max-time-negative", f"measure {M} --max-time -0.5", 2, "argument --max-time"),
    ("max-time-nan", f"measure {M} --max-time nan", 2, "argument --max-time"),
    ("rounds-0", f"measure {M} --rounds 0", 2, "argument --rounds"),
    ("cooldown-absurd", f"measure {M} --cooldown-temp 500", 2, "argument --cooldown-temp"),
    ("dtype-on-cpu", f"measure {M} --dtype float16", 2, "apply to accelerator cuda only"),
    ("wrong-runtime", f"measure {M} --runtime tflite", 2, "runtime tflite cannot run m.onnx (onnx, for onnxruntime)"),
    ("model-missing", "measure {w}/nope.onnx --registry {w}/reg.toml --device loc --out {w}/out", 2,
     "model file {w}/nope.onnx not found"),
    ("model-format", "measure {w}/model.txt --registry {w}/reg.toml --device loc", 2, "cannot tell the format of"),
    ("torchscript-no-shape", "measure {w}/ts.pt --registry {w}/reg.toml --device loc --out {w}/out", 2,
     "ts.pt is a TorchScript file, which declares no input shapes; give them (--input-shape 1x3x224x224"),
    ("torchscript-collect", "collect --models {w}/ts.pt " + C, 2, "ts.pt is a TorchScript file"),
    ("input-shape-space", "collect --space nb201 --n 2 --input-shape 1x3x32x32 " + C, 2,
     "--input-shape applies to TorchScript files given with --models"),
    ("input-shape-zero", f"measure {M} --input-shape 1x3x0", 2, "argument --input-shape: must be a shape such as"),
    ("input-shape-huge", f"measure {M} --input-shape 100000x100000", 2, "argument --input-shape: must be a shape"),
    ("input-shape-text", f"measure {M} --input-shape 1x3xabc", 2, "argument --input-shape: must be a shape"),
    ("input-shape-onnx", f"measure {M} --input-shape 1x3x32x32", 2,
     "--input-shape applies to TorchScript (.pt) files, which declare no inputs; m.onnx declares its own"),
    ("device-unknown", "measure {w}/m.onnx --registry {w}/reg.toml --device ../evil --out {w}/out", 2,
     "unknown device '../evil'"),
    ("out-proc", "measure {w}/m.onnx --registry {w}/reg.toml --device loc --out /proc/latkit-test", 2,
     "cannot write to /proc/latkit-test: it is on a filesystem without storage; choose another --out"),
    ("out-under-file", "measure {w}/m.onnx --registry {w}/reg.toml --device loc --out {w}/afile/sub", 2,
     "cannot write to {w}/afile/sub"),
    ("out-s3-unreachable", "measure {w}/m.onnx --registry {w}/reg.toml --device loc "
     "--out s3://latkit-test/d?endpoint_override=http://127.0.0.1:9&region=us-east-1&scheme=http", 2,
     "s3://latkit-test/d"),
    ("registry-not-toml", "measure {w}/m.onnx --registry {w}/badtoml.toml", 2, "badtoml.toml is not valid TOML"),
    ("registry-unknown-key", "measure {w}/m.onnx --registry {w}/unknownkey.toml --device loc", 2,
     "device 'loc' has unknown key(s) colour; known keys:"),
    ("registry-bad-port", "device list --registry {w}/badport.toml", 2,
     "the port of device pi must be a whole number >= 1 and <= 65535, got 'twenty-two'"),
    ("registry-not-tables", "device list --registry {w}/notables.toml", 2, "must hold only [devices.NAME] tables"),
    ("lease-unusable", "measure {w}/m.onnx --registry {w}/reg.toml --device nolease --out {w}/out", 1,
     "nolease: cannot open the device lease"),
    ("collect-devices-empty", f"collect --models {{w}}/m.onnx {C} --devices ''", 2, "--devices names no device"),
    ("collect-nothing", f"collect {C}", 2, "give either --models"),
    ("collect-space-no-n", f"collect --space nb201 {C}", 2, "--space needs --n"),
    ("collect-executor", f"collect --models {{w}}/m.onnx {C} --executor rey", 2, "--executor 'rey': use local, ray"),
    ("collect-n-0", f"collect --space nb201 --n 0 {C}", 2, "argument --n: must be a whole number >= 1"),
    ("collect-n-too-many", f"collect --space nb201 --n 20000 {C}", 2, "cannot draw 20000 distinct archs"),
    ("collect-space-unknown", f"collect --space resnet --n 2 {C}", 2, "unknown space 'resnet'; known spaces:"),
    ("ofa-resolution-3", f"collect --space ofa --n 2 --resolution 3 {C}", 2,
     "resolution 3 is not an input side of ofa; choose 128 to 224 in steps of 4"),
    ("ofa-resolution-off-grid", f"collect --space ofa --n 2 --resolution 130 {C}", 2, "resolution 130"),
    ("nb201-resolution-absurd", f"collect --space nb201 --n 2 --resolution 100000 {C}", 2,
     "not an input side of nb201"),
    ("collect-batch-0", f"collect --space nb201 --n 2 --batch-size 0 {C}", 2, "argument --batch-size"),
    ("collect-n-with-models", f"collect --models {{w}}/m.onnx --n 3 {C}", 2, "--n applies to --space only"),
    ("collect-wrong-runtime", f"collect --models {{w}}/m.onnx --runtime torch {C}", 2, "runtime torch cannot run"),
    ("collect-retries-negative", f"collect --models {{w}}/m.onnx --retries -1 {C}", 2, "argument --retries"),
    ("collect-timeout-0", f"collect --models {{w}}/m.onnx --job-timeout 0 {C}", 2, "argument --job-timeout"),
    ("collect-seed-negative", f"collect --space nb201 --n 2 --seed -1 {C}", 2, "argument --seed"),
    ("collect-no-models", f"collect --models {{w}}/empty {C}", 2, "no model files"),
    ("collect-devices-json", "collect --models {w}/m.onnx --registry {w}/reg.toml --devices loc --out {w}/devjson",
     2, "d1-0123.json is not a device probe"),
    ("collect-device-fails", "collect -q --models {w}/m.onnx --registry {w}/reg.toml --devices nolease "
     "--out {w}/out", 1, "1 device(s) failed (nolease)"),
    ("device-add-port", "device add x --host 192.0.2.7 --port 70000 --registry {w}/r.toml", 2, "argument --port"),
    ("device-add-name", "device add ../x --host 192.0.2.7 --registry {w}/r.toml", 2,
     "device name '../x' is not a valid name"),
    ("device-probe-unknown", "device probe nope --registry {w}/reg.toml", 2, "unknown device 'nope'"),
    ("device-remove-unknown", "device remove nope --registry {w}/reg.toml", 2, "no registered device 'nope'"),
    ("data-show-missing", "data show {w}/missing", 2, "no dataset at {w}/missing"),
    ("data-show-foreign", "data show {w}/foreign", 2, "other-tool.parquet is not latkit data (no key and no status"),
    ("data-show-not-parquet", "data show {w}/notpq", 2, "notes.parquet is not latkit data (not a Parquet file"),
    ("data-card-devices-json", "data card {w}/devjson", 2, "d1-0123.json is not a device probe"),
    ("data-show-old-layout", "data show {w}/oldlayout", 2, "layout of an older latkit (rows beside the card); run `latkit data migrate"),
    ("data-compact-missing", "data compact {w}/missing", 2, "no dataset at {w}/missing"),
    ("data-compact-foreign", "data compact {w}/foreign", 2, "other-tool.parquet is not latkit data (no key and no status"),
    ("data-compact-not-parquet", "data compact {w}/notpq", 2, "notes.parquet is not latkit data (not a Parquet file"),
    ("data-migrate-missing", "data migrate {w}/missing", 2, "no dataset at {w}/missing"),
    ("data-plot-unwritable", "data plot {w}/data --out {w}/afile/plots", 2,
     "cannot write {w}/afile/plots: Not a directory; give --out a writable folder"),
    ("data-import-missing", "data import-help {w}/missing {w}/out2", 2, "no HELP latency tables"),
    ("data-retest-n-1", "data retest {w}/data --n 1", 2, "argument --n"),
    ("data-retest-published", "data retest {w}/data --n 5 --registry {w}/reg.toml", 2, "has 0 measured ok rows"),
    ("fit-not-parquet", "predictor fit --data {w}/notparquet.parquet --space nb201 --device d1", 2,
     "notparquet.parquet is not a Parquet file"),
    ("fit-text-latency", "predictor fit --data {w}/textlatency.parquet --space nb201 --device d1", 2,
     "column latency_ms of {w}/textlatency.parquet is string, not a number"),
    ("fit-space-unknown", "predictor fit --data {w}/table.parquet --space resnet --device d1", 2,
     "unknown space 'resnet'"),
    ("fit-device-unknown", "predictor fit --data {w}/table.parquet --space nb201 --device d9", 2,
     "unknown device(s) d9"),
    ("fit-budget-small", f"predictor fit {F} --budget 5", 2, "argument --budget: must be a whole number >= 10"),
    ("fit-out-unwritable", f"predictor fit {F} --out {{w}}/afile/m.latkit-model", 2,
     "cannot write {w}/afile/m.latkit-model: {w}/afile is a file; give --out a writable file path"),
    ("fit-out-folder", f"predictor fit {F} --out {{w}}/empty", 2, "it is a folder"),
    ("fit-json-unwritable", f"predictor fit {F} --json {{w}}/afile/fit.json", 2,
     "cannot write {w}/afile/fit.json: {w}/afile is a file; give --json a writable file path"),
    ("transfer-source-samples-0", f"predictor transfer {T} --source-samples 0", 2, "argument --source-samples"),
    ("transfer-seeds-0", f"predictor transfer {T} --seeds 0", 2, "argument --seeds"),
    ("transfer-target-samples-1", f"predictor transfer {T} --target-samples 1", 2, "argument --target-samples"),
    ("transfer-overlap", "predictor transfer --data {w}/table.parquet --space nb201 --source d1 --target d1", 2,
     "both source and target"),
    ("transfer-json-unwritable", f"predictor transfer {T} --json {{w}}/afile/t.json", 2, "give --json a writable"),
    ("predict-file-missing", f"predictor predict {P} --file {{w}}/nofile", 2, "cannot read --file {w}/nofile"),
    ("predict-nothing", f"predictor predict {P}", 2, "one of the arguments --arch --file --all is required"),
    ("predict-two-sources", f"predictor predict {P} --all --file {{w}}/afile", 2, "not allowed with argument"),
    ("predict-garbage-model", f"predictor predict {P} --all", 2, "garbage.latkit-model"),
    # the wrong kind of file, as a newcomer gives it: a predictor where a dataset goes and the reverse
    ("data-show-predictor-file", "data show {w}/pred.latkit-model", 2,
     "pred.latkit-model is a latkit predictor file (give it to latkit predictor predict --model), not a latkit "
     "dataset"),
    ("data-show-parquet-file", "data show {w}/table.parquet", 2,
     "table.parquet is a Parquet table, not a latkit dataset; give the dataset's folder"),
    ("data-show-only-reference", "data show {w}/refonly", 2,
     "no rows under {w}/refonly/data); a collection into it timed only the reference network before it stopped; "
     "run it again to resume"),
    ("data-show-only-rounds", "data show {w}/roundsonly", 2,
     "no rows under {w}/roundsonly/data); a collection into it stopped before any model's last round; run it again "
     "to resume (the rounds it timed are kept)"),
    ("data-card-predictor-file", "data card {w}/pred.latkit-model", 2, "pred.latkit-model is a latkit predictor file"),
    ("data-retest-text-file", "data retest {w}/model.txt", 2, "model.txt is a text file, not a latkit dataset"),
    ("fit-predictor-file", "predictor fit --data {w}/pred.latkit-model --space nb201 --device d1", 2,
     "pred.latkit-model is not a Parquet file but a latkit predictor file"),
    ("transfer-predictor-file", "predictor transfer --data {w}/pred.latkit-model --space nb201 --source d1 "
     "--target d2", 2, "pred.latkit-model is not a Parquet file but a latkit predictor file"),
    ("predict-model-parquet", "predictor predict --model {w}/table.parquet --all", 2,
     "table.parquet is not a valid latkit model but a Parquet table (rows to fit on)"),
    ("predict-model-dataset", "predictor predict --model {w}/data --all", 2,
     "give one of its models: {w}/data/models/nb201-d1.latkit-model"),
    ("predict-file-own-output", "predictor predict --model {w}/pred.latkit-model --file {w}/pred.tsv", 2,
     "--file {w}/pred.tsv line 1: invalid nb201 arch: 'arch\\tlatency_ms'"),
    ("collect-unknown-option", f"collect --models {{w}}/m.onnx {C} --force", 2,
     "unrecognized arguments: --force (see latkit collect --help)"),
    ("measure-option-typo", f"measure {M} --forse", 2, "unrecognized arguments: --forse; did you mean '--force'?"),
    ("quiet-and-verbose", "data show {w}/data -q -v", 2, "not allowed with argument"),
    ("show-device-unknown", "device show nope --registry {w}/reg.toml", 2, "unknown device 'nope'"),
    ("ssh-config-missing", "device add b --host b --ssh-config {w}/nosuch --registry {w}/new.toml", 2,
     "ssh config {w}/nosuch not found; fix --ssh-config"),
    ("ssh-config-proxycommand", "device add b --host pc --ssh-config {w}/ssh_config --registry {w}/new.toml", 2,
     "gives pc a ProxyCommand, which latkit does not run; use ProxyJump"),
    ("ssh-config-jump-unknown", "device add b --host viaghost --ssh-config {w}/ssh_config --registry {w}/new.toml",
     2, "cannot resolve jump host ghost.invalid:22 of b: no Host block in the ssh config gives ghost.invalid a HostName"),
]


@pytest.mark.parametrize("args,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_invocation(w, args, code, words):
    t0 = time.time()
    r = latkit(*shlex.split(args.format(w=w)))
    took = time.time() - t0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 1 and lines[0].startswith("latkit: error: "), r.stderr
    assert words.format(w=w) in lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    if code == 2:
        assert r.stdout == ""  # a refused command prints no results
    assert took < 60  # refused before any exporting, timing or training


def test_the_table_is_wide():
    """At least 40 bad invocations, over every subcommand."""
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
    used = {" ".join(c[1].split()[:2]) for c in CASES}
    for command in ("measure", "collect", "device add", "device show", "device probe", "device remove", "device list",
                    "data show", "data card", "data plot", "data import-help", "data retest", "predictor fit",
                    "predictor transfer", "predictor predict"):
        assert any(u.startswith(command) for u in used), command


def test_predict_all_into_head_ends_quietly(tmp_path):
    """`latkit predictor predict --all ... | head -3`: three lines out, no BrokenPipeError, no traceback."""
    from latkit.predictor.models import make_model
    archs = get_space("nb201").sample(30, np.random.default_rng(1))
    make_model("ridge", "nb201").fit(archs, np.linspace(1, 2, 30)).save(tmp_path / "m.latkit-model")
    cmd = (f"{shlex.quote(sys.executable)} -m latkit.collector.cli predictor predict --model {tmp_path}/m.latkit-model "
           "--space nb201 --all | head -3")
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.stdout.splitlines()[0] == "arch\tlatency_ms" and len(r.stdout.splitlines()) == 3
    assert r.stderr == "", r.stderr
    assert r.returncode == 141  # latkit's own exit (pipefail): the README's 141, as a tool stopped by SIGPIPE


def test_latkit_debug_shows_the_traceback_behind_the_one_line(w):
    """README: a traceback appears only with LATKIT_DEBUG=1; the one line still ends stderr."""
    args = shlex.split("measure {w}/nope.onnx --registry {w}/reg.toml --device loc --out {w}/out".format(w=w))
    plain = latkit(*args)
    debug = subprocess.run([sys.executable, "-m", "latkit.collector.cli", *args], capture_output=True, text=True,
                           timeout=120, cwd=ROOT, env={**os.environ, "LATKIT_DEBUG": "1"})
    assert "Traceback" not in plain.stderr and plain.returncode == debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "LatkitError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()
