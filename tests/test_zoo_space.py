"""The zoo as a space to collect from (issue 25): width / depth variants of torchvision's families, each a
distinct network; `collect --space zoo` on `local`; graph models that still read every measured graph after
the cache bound evicted the model files (the weightless copies in <cache>/graphs/); external-data files
predicted from the CLI."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("torchvision") is None:
    pytest.skip("the zoo needs torchvision (pip install 'latkit[zoo]')", allow_module_level=True)
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from latkit.collector import LatkitError, zoo  # noqa: E402
from latkit.collector.spaces import get_space  # noqa: E402
from latkit.collector.spaces import zoo as zoo_space  # noqa: E402

FAST = ["--repeats", "3", "--min-time", "0.01", "--max-time", "0.05", "--rounds", "1"]


def shapes(name: str) -> tuple:
    """The network's parameter shapes in order (built on the meta device: no weights drawn)."""
    with torch.device("meta"):
        return tuple(tuple(p.shape) for p in zoo.build(name).parameters())


def n_params(name: str) -> int:
    return sum(int(np.prod(s)) for s in shapes(name))


@pytest.mark.parametrize("family", sorted(zoo.VARIANTS))
def test_width_and_depth_scale_the_family_and_one_is_the_family_itself(family):
    keys = zoo.VARIANTS[family]
    base = n_params(f"{family}@64")
    small = n_params(f"{family}[{','.join(k + '=0.5' for k in keys)}]@64")
    big = n_params(f"{family}[{','.join(k + '=1.5' for k in keys)}]@64")
    assert small < base < big
    # the variant path at 1.0 builds what torchvision's builder builds (same shapes, so the same graph)
    with torch.device("meta"):
        same = tuple(tuple(p.shape) for p in zoo._variant(family, 1.0, 1.0, {}).parameters())
    assert same == shapes(family)
    assert zoo.canonical(f"{family}[{','.join(k + '=1' for k in keys)}]@224") == family


def test_regnets_built_through_the_variant_path_keep_torchvisions_weights():
    """Regnets always go through latkit's own builder (torchvision's computes widths with tensors, which the
    meta device cannot): the same calls in the same order, so the same weights, so the same files as before."""
    import importlib
    zoo.torchvision()
    for family in ("regnet_y_400mf", "regnet_x_400mf"):
        torch.manual_seed(zoo.weight_seed(family))
        ref = getattr(importlib.import_module("torchvision.models"), family)(weights=None).state_dict()
        mine = zoo.build(family).state_dict()
        assert ref.keys() == mine.keys() and all(torch.equal(ref[k], mine[k]) for k in ref)


def test_variant_keywords_are_checked_in_one_line():
    for bad, why in [("squeezenet1_0[width=0.5]", "squeezenet1_0 has no width variants; families with width: "),
                     ("resnet18[width=0.5]", "resnet18 has no width variants"),
                     ("resnet50[depth=9]", "depth 9 is outside 0.25-4.0"),
                     ("resnet50[depth=True]", "depth True is outside"),
                     ("resnet50[depth=0.5,depth=1]", "repeats a keyword")]:
        with pytest.raises(LatkitError, match=why.replace("(", r"\(").replace("[", r"\[")) as e:
            zoo.parse(bad)
        assert "\n" not in str(e.value)
    assert zoo.canonical("efficientnet_b0[width=2,depth=0.5]@128") == "efficientnet_b0[depth=0.5,width=2.0]@128"


def test_the_space_is_a_grid_of_distinct_networks():
    """Every name of the grid is a different network: no two names of one input side build the same layers
    (rounding could fold 2 blocks x 0.75 back to 2; the grid avoids it), so N names are N distinct graphs."""
    sp = get_space("zoo")
    names = sp.enumerate()
    assert len(names) == len(set(names)) == sp.size > 2000
    at_96 = get_space("zoo", resolution=96).enumerate()
    assert len(at_96) * len(zoo_space.RESOLUTIONS) == len(names) and all(n.endswith("@96") for n in at_96)
    seen = {}
    for n in at_96:
        seen.setdefault(shapes(n), []).append(n)
    assert [v for v in seen.values() if len(v) > 1] == []
    assert sp.validate("resnet50[width=1.0]@224") == "resnet50" and sp.input_shape("resnet18@96") == (1, 3, 96, 96)
    with pytest.raises(LatkitError, match="carries its input side"):
        get_space("zoo", resolution=64).input_shape("resnet18@96")
    with pytest.raises(LatkitError, match="no arch encoding"):
        sp.proxies("resnet18")
    a = sp.sample(50, np.random.default_rng(0))
    assert a == sp.sample(50, np.random.default_rng(0)) and set(a) <= set(names)
    assert sp.onehot(a).shape == (50, len(zoo.ZOO) + 3)
    assert sp.flops("regnet_y_400mf@64") > sp.flops("regnet_y_400mf[width=0.5]@64") > 0


def latkit(root, env, *args):
    return subprocess.run([sys.executable, "-m", "latkit.collector.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=900, cwd=root, env=env)


def test_collect_the_zoo_then_fit_after_the_weights_are_evicted(tmp_path):
    """`collect --space zoo` on local measures real variants; every ONNX export left a weightless graph copy
    that encodes as the file does, so after `--cache-max-gb 0` evicted every model file, `predictor fit
    --space onnx` finds all graphs again and predicts as before."""
    from latkit.predictor.graphs import encode
    cache = tmp_path / "cache"
    env = dict(os.environ, LATKIT_CACHE=str(cache))
    env.pop("LATKIT_DEBUG", None)
    r = latkit(tmp_path, env, "collect", "--space", "zoo", "--resolution", "32", "--n", "8", "--devices", "local",
               "--out", "data", "--no-reference", "-q", *FAST)
    assert r.returncode == 0, r.stderr
    from latkit.collector import Store
    rows = [x for x in Store(tmp_path / "data").read().to_pylist() if x["status"] == "ok"]
    assert len(rows) == 8 and all(x["space"] == "zoo" and x["arch"].endswith("@32") for x in rows)
    copies = sorted((cache / "graphs").glob("*.onnx"))
    assert {p.stem for p in copies} == {x["model_sha256"] for x in rows}
    for p in copies[:3]:
        full, kept = encode(cache / p.name), encode(p, external="shapes")
        assert full.totals() == kept.totals() and p.stat().st_size < (cache / p.name).stat().st_size / 3
    fit = ["predictor", "fit", "--space", "onnx", "--data", "data", "--device", "local", "--model", "flops", "-q"]
    first = latkit(tmp_path, env, *fit)
    assert first.returncode == 0 and "flops model of 8 graphs (ok rows without an .onnx file found: 0)" in first.stdout
    model = tmp_path / "data" / "models" / "onnx-local.latkit-model"
    probe = tmp_path / "probe.onnx"
    probe.write_bytes((cache / copies[0].name).read_bytes())
    before = latkit(tmp_path, env, "predictor", "predict", "--model", model, "--file", probe)
    assert before.returncode == 0, before.stderr
    again = latkit(tmp_path, env, "collect", "--space", "zoo", "--resolution", "32", "--n", "8", "--devices",
                   "local", "--out", "data", "--no-reference", "--cache-max-gb", "0", "-q", *FAST)
    assert again.returncode == 0, again.stderr
    assert not list(cache.glob("*.onnx")) and len(list((cache / "graphs").glob("*.onnx"))) == 8  # weights gone
    second = latkit(tmp_path, env, *fit)
    assert second.returncode == 0 and "flops model of 8 graphs (ok rows without an .onnx file found: 0)" in \
        second.stdout, second.stdout + second.stderr
    after = latkit(tmp_path, env, "predictor", "predict", "--model", model, "--file", probe)
    assert after.stdout == before.stdout


def test_predict_reads_a_model_whose_weights_are_in_an_external_data_file(tmp_path):
    """A file as torch's dynamo exporter writes it (weights in `.onnx.data`) is predicted from the CLI from its
    declared shapes, the same as the file with the weights inside; the data file is never opened."""
    from latkit.predictor.graphdata import make
    art = zoo.export("mobilenet_v3_small@64", "onnx", cache_dir=tmp_path / "cache")
    inside = tmp_path / "inside.onnx"
    inside.write_bytes(art.path.read_bytes())
    m = onnx.load(str(inside))
    onnx.save(m, str(tmp_path / "outside.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="outside.onnx.data", size_threshold=0)
    (tmp_path / "outside.onnx.data").unlink()
    os.mkfifo(tmp_path / "outside.onnx.data")  # opening it would block
    small = [zoo.export(n, "onnx", cache_dir=tmp_path / "cache").path for n in
             ("mobilenet_v3_small@32", "mobilenet_v3_small@48", "mobilenet_v3_small[width=0.5]@64")]
    model = make("flops").fit([str(p) for p in small], [1.0, 1.8, 2.5])
    model.save(tmp_path / "m.latkit-model")
    env = dict(os.environ, LATKIT_CACHE=str(tmp_path / "cache"))
    out = latkit(tmp_path, env, "predictor", "predict", "--model", "m.latkit-model", "--file", "inside.onnx",
                 "outside.onnx")
    assert out.returncode == 0, out.stderr
    lines = [line.split("\t") for line in out.stdout.rstrip("\n").split("\n")[1:]]
    assert [x[0] for x in lines] == ["inside.onnx", "outside.onnx"] and lines[0][1:] == lines[1][1:]
    assert float(lines[0][1]) > 0


def test_predictors_of_arch_strings_refuse_the_zoo_in_one_line(tmp_path):
    """The zoo has no arch encoding: `predictor fit|build --space zoo` says to fit a graph model instead, at
    once (before reading rows or building networks)."""
    from conftest import ROOT
    for args in (["fit", "--space", "zoo", "--data", ROOT / "datasets" / "local-cpu-zoo", "--device", "local"],
                 ["build", "--space", "zoo", "--device", "local", "--out", tmp_path / "b"]):
        r = latkit(tmp_path, dict(os.environ), "predictor", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "zoo archs have no arch encoding" in r.stderr and "predictor fit --space onnx" in r.stderr
