"""Hostile files a user may be handed: registries, datasets and outputs crafted or broken. Each gives one line on
stderr and exit 2, fast, writes nothing outside its folder, and never ends in the catch-all 'please report it'."""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from latkit.collector import LatkitError, Registry


def latkit(*args, env=None, cwd=None, timeout=60):
    full = {**os.environ, **(env or {})}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=full, cwd=cwd)
    r.seconds = time.monotonic() - t0
    return r


def refused(r, *words, code=2):
    """One `latkit: error:` line naming what was wrong (`words`), the exit code, and no catch-all."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("latkit: error: "), r.stderr
    assert "please report" not in r.stderr
    assert all(w in r.stderr for w in words), r.stderr
    assert len(r.stderr) < 1000  # nothing echoed whole


def deep(n: int) -> str:
    return "x = " + "[" * n + "]" * n + "\n"


REGISTRIES = {
    "fifo": (lambda p: os.mkfifo(p), ["is a FIFO"]),
    "dev-zero": (lambda p: os.symlink("/dev/zero", p), ["is a character device"]),
    "folder": (lambda p: p.mkdir(), ["is a folder"]),
    "symlink-loop": (lambda p: (os.symlink(p.with_name("b"), p), os.symlink(p, p.with_name("b"))), ["symlink loop"]),
    "huge": (lambda p: p.write_bytes(b"# " + b"x" * (5 * 2 ** 20)), ["larger than 4 MB"]),
    "deep-array": (lambda p: p.write_text(deep(50_000)), ["registry"]),
    "deep-tables": (lambda p: p.write_text("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n"), ["registry"]),
    "not-utf8": (lambda p: p.write_bytes(b"[devices.a]\nhost = \"\xff\xfe\"\n"), ["not valid TOML"]),
    "devices-number": (lambda p: p.write_text("devices = 5\n"), ["[devices.NAME] tables"]),
    "top-level-key": (lambda p: p.write_text("evil = 1\n"), ["[devices.NAME] tables", "evil"]),
    "port-text": (lambda p: p.write_text('[devices.a]\ntransport = "ssh"\nhost = "h"\nport = "22"\n'), ["port"]),
    "port-bool": (lambda p: p.write_text('[devices.a]\ntransport = "ssh"\nhost = "h"\nport = true\n'), ["port"]),
    "port-range": (lambda p: p.write_text('[devices.a]\ntransport = "ssh"\nhost = "h"\nport = 70000\n'), ["port"]),
    "tags-text": (lambda p: p.write_text('[devices.a]\ntags = "cpu"\n'), ["tags"]),
    "probe-list": (lambda p: p.write_text('[devices.a]\nprobe = [1]\n'), ["probe"]),
    "host-number": (lambda p: p.write_text('[devices.a]\ntransport = "ssh"\nhost = 5\n'), ["host"]),
    "transport": (lambda p: p.write_text('[devices.a]\ntransport = "telnet"\n'), ["telnet"]),
    "traversal-name": (lambda p: p.write_text('[devices."../../etc"]\n'), ["not a valid name"]),
    "unknown-key": (lambda p: p.write_text('[devices.a]\nshell = "rm -rf /"\n'), ["unknown key", "shell"]),
    "entry-not-table": (lambda p: p.write_text('[devices]\na = 1\n'), ["[devices.NAME] tables"]),
}


@pytest.mark.parametrize("case", sorted(REGISTRIES))
def test_hostile_registry(tmp_path, case):
    make, words = REGISTRIES[case]
    path = tmp_path / "devices.toml"
    make(path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = latkit("device", "list", "--no-check", env={"LATKIT_REGISTRY": str(path)}, timeout=30)
    refused(r, *words)
    assert r.seconds < 15
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < max(before, 1) + 600_000  # KB: bounded


def test_registry_behind_a_link_is_written_through_it(tmp_path):
    """A registry kept elsewhere (dotfiles) and linked: removing a device edits the target, the link stays."""
    real = tmp_path / "dotfiles" / "devices.toml"
    real.parent.mkdir()
    real.write_text('# my devices\n[devices.a]\ntransport = "local"\n\n[devices.b]\ntransport = "local"\n')
    link = tmp_path / "config" / "devices.toml"
    link.parent.mkdir()
    link.symlink_to(real)
    r = latkit("device", "remove", "a", "--registry", link)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and link.resolve() == real
    assert [d.name for d in Registry(link).devices()] == ["local", "b"]
    assert real.read_text().startswith("# my devices") and "[devices.a]" not in real.read_text()
    assert sorted(p.name for p in real.parent.iterdir()) == ["devices.toml"]  # no temporary file left


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
def test_special_model_file_refused(tmp_path, kind):
    path = tmp_path / "model.onnx"
    {"fifo": lambda: os.mkfifo(path), "dev-zero": lambda: os.symlink("/dev/zero", path),
     "folder": lambda: path.mkdir()}[kind]()
    r = latkit("measure", path, "--out", tmp_path / "d", timeout=30)
    refused(r, str(path))
    assert not (tmp_path / "d").exists()


def test_read_bytes_bounds_what_it_read(tmp_path):
    """read_bytes reads what is there, bounded by what it read, not by what stat says."""
    from latkit.collector import validate
    from latkit.collector.errors import LatkitError
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert validate.read_bytes(p, "thing", 3) == b"abc"
    with pytest.raises(LatkitError, match="larger than"):
        validate.read_bytes(p, "thing", 2)
    with pytest.raises(LatkitError, match="cannot read thing .*nope: No such file or directory"):
        validate.read_bytes(tmp_path / "nope", "thing", 2)
    assert Path(validate.readable_file(p, "thing")) == p


def test_empty_out_is_refused_not_the_current_folder(artifacts, tmp_path):
    r = latkit("measure", artifacts["onnx"].path, "--out", "", cwd=tmp_path)
    refused(r, "dataset path is empty")
    assert list(tmp_path.iterdir()) == []


def test_card_and_plots_never_write_through_links(artifacts, tmp_path, fast):
    """A shared dataset whose README.md links to a file of the user's and whose plots/ links elsewhere: the
    card replaces the link (the target is untouched and not read), plot refuses the linked folder."""
    from latkit.collector import measure
    data = tmp_path / "shared"
    measure(artifacts["onnx"], settings=fast, out=data)
    victim = tmp_path / "bashrc"
    victim.write_text("precious\n")
    (data / "README.md").symlink_to(victim)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (data / "plots").symlink_to(elsewhere)
    r = latkit("data", "card", data)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n" and not (data / "README.md").is_symlink()
    assert "precious" not in (data / "README.md").read_text()
    refused(latkit("data", "plot", data), "symbolic link out of the dataset")
    assert list(elsewhere.iterdir()) == []
    (data / "plots").unlink()
    (data / "plots").mkdir()
    (data / "plots" / "custom_latency_hist.png").symlink_to(victim)
    r = latkit("data", "plot", data)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n" and not (data / "plots" / "custom_latency_hist.png").is_symlink()


def test_a_huge_arch_string_is_not_echoed_whole(tmp_path):
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    from latkit.predictor.models import make_model
    archs = sample(get_space("nb201"), 12, "uniform", 0)
    model = tmp_path / "m.latkit-model"
    make_model("ridge", "nb201").fit(archs, [1.0 + i for i in range(12)]).save(model)
    (tmp_path / "archs.txt").write_text("|nor_conv_3x3~0|" + "x" * 10**6 + "\n")
    r = latkit("predictor", "predict", "--model", model, "--space", "nb201", "--file", tmp_path / "archs.txt")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("latkit: error: ")
    assert len(r.stderr) < 2100 and "more characters" in r.stderr


SHIPPED = Path(__file__).resolve().parents[1] / "datasets" / "local-cpu-nb201-fbnet"


def _leaf(d: Path) -> Path:
    return sorted((d / "data").rglob("*.parquet"))[0].parent


def _retyped(d: Path, column: str, values) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    f = sorted(_leaf(d).glob("*.parquet"))[0]
    t = pq.read_table(f)
    t = t.set_column(t.schema.get_field_index(column), column, pa.array(values(t.num_rows)))
    pq.write_table(t, f.with_name("crafted.parquet"))


DATASETS = {
    "symlink-loop": (lambda d: os.symlink(_leaf(d), _leaf(d) / "loop"), ["is a symbolic link"]),
    "symlink-out": (lambda d: os.symlink("/etc", _leaf(d) / "etc"), ["is a symbolic link"]),
    "dangling-link": (lambda d: os.symlink("/nonexistent.parquet", _leaf(d) / "x.parquet"), ["is a symbolic link"]),
    "fifo": (lambda d: os.mkfifo(_leaf(d) / "x.parquet"), ["not a regular file"]),
    "data-is-a-file": (lambda d: (__import__("shutil").rmtree(d / "data"), (d / "data").write_text("x")),
                       ["is a file, not the folder of rows"]),
    "garbage-parquet": (lambda d: (_leaf(d) / "g.parquet").write_bytes(b"PAR1" + os.urandom(999) + b"PAR1"),
                        ["is not latkit data"]),
    "empty-parquet": (lambda d: (_leaf(d) / "e.parquet").write_bytes(b""), ["is not latkit data"]),
    "foreign-table": (lambda d: __import__("pyarrow.parquet").parquet.write_table(
        __import__("pyarrow").table({"a": [1]}), _leaf(d) / "f.parquet"), ["is not latkit data"]),
    "latency-as-text": (lambda d: _retyped(d, "latency_ms", lambda n: ["fast"] * n), ["cannot be read"]),
}


@pytest.mark.parametrize("case", sorted(DATASETS))
@pytest.mark.parametrize("command", ["show", "card", "fit"])
def test_hostile_dataset(tmp_path, case, command):
    import shutil
    make, words = DATASETS[case]
    d = tmp_path / "shared"
    shutil.copytree(SHIPPED, d)
    make(d)
    args = {"show": ["data", "show", d], "card": ["data", "card", d],
            "fit": ["predictor", "fit", "--data", d, "--space", "nb201", "--device", "local", "--budget", "10",
                    "--model", "ridge", "--out", tmp_path / "m.latkit-model"]}[command]
    r = latkit(*args, timeout=60)
    refused(r, *words)
    assert r.seconds < 30 and not (tmp_path / "m.latkit-model").exists()


def test_escapes_in_a_dataset_are_shown_not_obeyed(tmp_path):
    """A device name crafted to retitle the terminal and fake a line: data show and the card show it escaped."""
    import shutil
    d = tmp_path / "shared"
    shutil.copytree(SHIPPED, d)
    _retyped(d, "device", lambda n: ["\x1b]0;pwned\x07\nlatkit: done | x"] * n)
    r = latkit("data", "show", d)
    assert r.returncode == 0 and "\x1b" not in r.stdout and "\\x1b]0;pwned\\x07\\nlatkit: done" in r.stdout
    assert latkit("data", "card", d).returncode == 0
    card = (d / "README.md").read_text()
    assert "\x1b" not in card and "\nlatkit: done" not in card and "\\nlatkit: done \\| x |" in card


def test_transfer_out_never_replaces_a_file_that_is_not_a_model(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    notes = out / "fbnet-raspi4.latkit-model"
    notes.write_text("my notes\n")
    help_fbnet = SHIPPED.parent / "help" / "fbnet_latency.parquet"
    r = latkit("predictor", "transfer", "--data", help_fbnet, "--space", "fbnet", "--source", "1080ti_1",
               "--target", "raspi4", "--target-samples", "5", "--source-samples", "20", "--seeds", "1", "--no-gnn",
               "--out", out, timeout=120)
    refused(r, str(notes), "not overwrite")
    assert notes.read_text() == "my notes\n"


def test_a_refusal_leaves_no_output_folder_behind(artifacts, tmp_path):
    """Outputs are checked before work starts but made by the first write: a command refused later (here:
    a runtime that cannot read the file; a budget the data cannot give) leaves no folder of its own."""
    r = latkit("measure", artifacts["onnx"].path, "--runtime", "tflite", "--out", tmp_path / "new" / "data")
    refused(r, "tflite")
    help_fbnet = SHIPPED.parent / "help" / "fbnet_latency.parquet"
    r = latkit("predictor", "fit", "--data", help_fbnet, "--space", "fbnet", "--device", "raspi4", "--budget",
               "100000", "--out", tmp_path / "models" / "m.latkit-model", "--report", tmp_path / "report")
    refused(r, "--budget")
    assert list(tmp_path.iterdir()) == []


def test_card_options_cannot_inject_lines(tmp_path):
    """--title and --licence come from a user's script or a shared Makefile: shown escaped, or refused."""
    import shutil
    d = tmp_path / "shared"
    shutil.copytree(SHIPPED, d)
    (d / "README.md").unlink()
    refused(latkit("data", "card", d, "--licence", "mit\nconfigs: []"), "not a licence identifier")
    r = latkit("data", "card", d, "--title", "x\x1b]0;t\x07\n---\nlicense: evil", "--licence", "MIT")
    assert r.returncode == 0, r.stderr
    card = (d / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "\nlicense: evil" not in card and "\x1b" not in card
    assert "# x\\x1b]0;t\\x07\\n---\\nlicense: evil" in card


@pytest.mark.parametrize("case", ["dev-zero", "huge", "wrong-types", "deep", "not-json"])
def test_a_shared_datasets_retest_figures_are_data(artifacts, tmp_path, fast, case):
    """A dataset's `_retest/*/retest.json` comes with the dataset: the card reads it with a size cap, never
    through a device file, and checks its types; a bad one is one line in the card, the card is still written."""
    from latkit.collector import measure
    data = tmp_path / "shared"
    measure(artifacts["onnx"], settings=fast, out=data)
    f = data / "_retest" / "20261206T000000Z" / "retest.json"
    f.parent.mkdir(parents=True)
    good = {"n": 2, "stamp": "x", "side_table": "_retest/x", "worst": [],
            "statistics": {"latency_ms": {"spearman": 1.0, "median_rel_diff": 0.01, "p90_rel_diff": 0.02}}}
    {"dev-zero": lambda: f.symlink_to("/dev/zero"),
     "huge": lambda: f.write_text(" " * (1 << 21) + "{}"),
     "wrong-types": lambda: f.write_text(json.dumps(dict(good, worst=[{"arch": 1, "device": "d", "a_ms": 1,
                                                                        "b_ms": 1}]))),
     "deep": lambda: f.write_text("[" * 100_000 + "]" * 100_000),
     "not-json": lambda: f.write_bytes(b"\xff\xfe{")}[case]()
    r = latkit("data", "card", data)
    assert r.returncode == 0, r.stderr
    card = (data / "README.md").read_text()
    assert "## Test-retest" in card and "are not what latkit data retest writes" in card or \
        "is a character device" in card or "larger than 1 MB" in card, card[-800:]
    f.unlink()
    f.write_text(json.dumps(good))
    assert latkit("data", "card", data).returncode == 0
    assert "| latency_ms | 1.0000 | 1.00 % | 2.00 % | - | - | - |" in (data / "README.md").read_text()


def _external_model(folder: Path, tensors: int = 1) -> tuple:
    """A small ONNX model whose `tensors` initializers keep their weights in `w.data` beside it: (path, model)."""
    import onnx
    from onnx import TensorProto, helper
    weights = (np.arange(64, dtype=np.float32) / 64).tobytes()
    (folder / "w.data").write_bytes(weights)
    inits = []
    for i in range(tensors):
        t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[64], data_location=TensorProto.EXTERNAL)
        for k, v in (("location", "w.data"), ("offset", "0"), ("length", str(len(weights)))):
            t.external_data.add(key=k, value=v)
        inits.append(t)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])
    nodes = [helper.make_node("Add", ["x", "w0"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(folder / "m.onnx"))
    return folder / "m.onnx", model


def _rewrite(path: Path, model, **entry) -> None:
    """Set (or add) these external-data entries of every initializer and save the model again."""
    import onnx
    for t in model.graph.initializer:
        have = {e.key: e for e in t.external_data}
        for k, v in entry.items():
            if k in have:
                have[k].value = v
            else:
                t.external_data.add(key=k, value=v)
    onnx.save(model, str(path))


@pytest.mark.parametrize("case,said", [
    ("absolute", "outside its folder"), ("dotdot", "outside its folder"), ("link", "a link or no regular file"),
    ("linked-folder", "a link or no regular file"), ("fifo", "a link or no regular file"),
    ("past-the-end", "which holds 256"), ("unknown-key", "unknown keys ['basepath']"),
    ("missing", "which is not beside it"), ("long-name", "cannot be read"), ("shared-file-over-2gb", "2 GB")])
def test_an_onnx_files_weights_references_are_data(tmp_path, monkeypatch, case, said):
    """A model file is data: what its external-data entries name is checked by latkit before onnx reads a byte, and
    a bad one is refused in one line (a host file such as a key never gets packed and shipped)."""
    from latkit.collector import Artifact
    from latkit.collector import external
    monkeypatch.setattr(external, "DEFAULT_CACHE", tmp_path / "cache")
    (tmp_path / "m").mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(b"\0" * 256)
    path, model = _external_model(tmp_path / "m", tensors=64 if case == "shared-file-over-2gb" else 1)
    packed = Artifact.from_file(path)  # the good one packs: one file, its weights inside
    assert packed.path.parent == tmp_path / "cache" and packed.arch == "m.onnx"
    if case == "absolute":
        _rewrite(path, model, location=str(secret))
    elif case == "dotdot":
        _rewrite(path, model, location="../secret")
    elif case == "link":
        (tmp_path / "m" / "ln.data").symlink_to(secret)
        _rewrite(path, model, location="ln.data")
    elif case == "linked-folder":
        (tmp_path / "m" / "sub").symlink_to(tmp_path, target_is_directory=True)
        _rewrite(path, model, location="sub/secret")
    elif case == "fifo":
        os.mkfifo(tmp_path / "m" / "p.data")
        _rewrite(path, model, location="p.data")
    elif case == "past-the-end":
        _rewrite(path, model, offset="200", length="100")
    elif case == "unknown-key":
        _rewrite(path, model, basepath="/")
    elif case == "missing":
        (tmp_path / "m" / "w.data").unlink()
    elif case == "long-name":
        _rewrite(path, model, location="x" * 5000)
    else:  # 64 tensors read one file: counted once per tensor, so a small file cannot stand for 64 x its size
        monkeypatch.setattr(external, "MAX_BYTES", 64 * 256 - 1)
    with pytest.raises(LatkitError, match=re.escape(said)):
        Artifact.from_file(path)


def test_a_model_that_only_names_location_is_not_taken_for_external_data(tmp_path, monkeypatch):
    """An input called `location`, or metadata with that key, is no weights reference: such a model ships as it is,
    even where onnx is not installed."""
    import onnx
    from onnx import TensorProto, helper
    from latkit.collector import Artifact
    x = helper.make_tensor_value_info("location", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["location"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="location", value="here")
    onnx.save(model, str(tmp_path / "m.onnx"))
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on a measure-only install
    assert Artifact.from_file(tmp_path / "m.onnx").path == (tmp_path / "m.onnx").resolve()
