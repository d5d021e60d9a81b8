"""The model zoo (collector/zoo.py): a fixed set of >= 20 real networks with stable names, torchvision importable
even where its C++ ops do not load, every network built and exported to ONNX (at a tiny resolution: quick)."""
import os
import sys

import numpy as np
import pytest

import importlib.util  # noqa: E402

if importlib.util.find_spec("torchvision") is None:  # not importorskip: a plain import may fail, see zoo.torchvision
    pytest.skip("the zoo needs torchvision (pip install 'latkit[zoo]')", allow_module_level=True)
torch = pytest.importorskip("torch")

from latkit.collector import LatkitError, zoo  # noqa: E402

# The fixed set, in order: a benchmark's JSON and datasets refer to these names. Changing it is a decision
# (a new ZOO list is a new benchmark), not a side effect.
FIXED = ("mobilenet_v3_small", "shufflenet_v2_x0_5", "mnasnet0_5", "shufflenet_v2_x1_0", "squeezenet1_1",
         "mobilenet_v3_large", "mnasnet1_0", "mobilenet_v2", "squeezenet1_0", "regnet_x_400mf", "regnet_y_400mf",
         "efficientnet_b0", "regnet_y_800mf", "efficientnet_b1", "googlenet", "resnet18", "regnet_x_1_6gf",
         "densenet121", "resnet34", "efficientnet_v2_s", "resnet50", "convnext_tiny", "vit_b_32",
         "fasterrcnn_mobilenet_v3_large_fpn.backbone", "ssdlite320_mobilenet_v3_large.backbone",
         "lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")


def test_names_are_unique_stable_and_cover_the_kinds():
    assert zoo.ZOO == FIXED
    assert len(set(zoo.ZOO)) == len(zoo.ZOO) >= 20
    kinds = {zoo.ENTRIES[n].kind for n in zoo.ZOO}
    assert kinds == {"classifier", "detection", "segmentation"}
    assert all(zoo.canonical(n) == n for n in zoo.ZOO)


def test_variant_names_are_canonical():
    assert zoo.canonical("resnet18@224") == "resnet18"
    assert zoo.canonical("resnet18@160") == "resnet18@160"
    assert zoo.canonical("mobilenet_v2[width_mult=0.75]@192") == "mobilenet_v2[width_mult=0.75]@192"
    assert zoo.parse("mobilenet_v2[width_mult=0.75]").kwargs == (("width_mult", 0.75),)
    assert zoo.parse("resnet18", resolution=96).name == "resnet18@96"
    assert zoo.weight_seed("resnet18@224") == zoo.weight_seed("resnet18") != zoo.weight_seed("resnet18@160")
    for bad in ("resnet", "resnet18@", "resnet18@8", "resnet18[x]", "resnet18[a=1,a=2]", "", "Resnet18"):
        with pytest.raises(LatkitError):
            zoo.parse(bad)


def test_torchvision_imports_and_its_models_are_usable():
    """Whether or not torchvision's C++ ops load beside this torch (a CUDA wheel beside torch+cpu does not),
    zoo.torchvision() gives working model definitions; where they did not load, _meta_registrations is the
    zoo's empty stand-in and nothing else of torchvision was replaced."""
    tv = zoo.torchvision()
    assert hasattr(tv.models, "resnet18")
    if not tv.extension._has_ops():
        assert "replaced by latkit" in (sys.modules["torchvision._meta_registrations"].__doc__ or "")
    assert zoo.torchvision_version() != "absent"


def test_builds_are_deterministic_and_variants_change_the_network():
    a, b = zoo.build("mobilenet_v3_small", 32), zoo.build("mobilenet_v3_small", 32)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    narrow = zoo.build("mobilenet_v2[width_mult=0.5]", 32)
    wide = zoo.build("mobilenet_v2", 32)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())
    with pytest.raises(LatkitError):
        zoo.build("resnet18[no_such_keyword=1]", 32)


# One of each kind and of each way through the exporters: plain CNN, SE/SiLU blocks, branches, attention (the
# MHA fast path off), a detection backbone (FPN, a tuple of feature maps), a segmentation model. Every zoo model
# is exported at 224 by scripts/bench_models.py (its JSON records failures); LATKIT_TEST_ZOO_ALL=1 exports all here.
# (vit_b_32 is 350 MB of weights: its attention path is checked on a small encoder layer below.)
SAMPLE = ("mobilenet_v3_small", "squeezenet1_1", "efficientnet_b0", "googlenet",
          "fasterrcnn_mobilenet_v3_large_fpn.backbone", "lraspp_mobilenet_v3_large")
ALL = bool(os.environ.get("LATKIT_TEST_ZOO_ALL"))


def test_every_zoo_model_builds_and_runs_at_a_tiny_resolution():
    torch.set_num_threads(1)
    for name in zoo.ZOO:
        res = max(32, zoo.ENTRIES[name].min_resolution)
        with torch.no_grad():
            y = zoo.build(name, res)(torch.randn(1, 3, res, res))
        assert all(isinstance(t, torch.Tensor) for t in (y if isinstance(y, tuple) else (y,))), name


@pytest.mark.parametrize("name", zoo.ZOO if ALL else SAMPLE)
def test_zoo_models_export_to_onnx_and_match_torch(tmp_path_factory, name):
    """The network (random weights) exports through latkit's exporters and the ONNX file gives torch's output."""
    import onnxruntime as ort
    torch.set_num_threads(1)
    cache = tmp_path_factory.getbasetemp() / "zoo-exports"
    res = 64
    art = zoo.export(name, "onnx", resolution=res, cache_dir=cache)
    assert art.space == "zoo" and art.arch == f"{name}@{res}" and art.inputs[0].shape == (1, 3, res, res)
    x = torch.randn(1, 3, res, res)
    with torch.no_grad():
        want = zoo.build(name, res)(x)
    want = want if isinstance(want, tuple) else (want,)
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=2e-3, atol=2e-3)
    assert not list(cache.glob("*.data")) and not list(cache.glob(".export-*")), "no stray external-data file"
    # a second export is a cache hit by spec (no network built): the same file
    assert zoo.export(name, "onnx", resolution=res, cache_dir=cache).sha256 == art.sha256


def test_attention_exports_to_onnx_with_the_fast_path_off(tmp_path):
    """Exporters trace under no_grad, where nn.MultiheadAttention takes the fused op the TorchScript ONNX exporter
    cannot write; the zoo's wrapper turns the fast path off for the trace (and back on after)."""
    import onnxruntime as ort

    from latkit.collector import export
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    art = export(zoo._no_fastpath(layer), (torch.randn(1, 5, 16),), "onnx", arch="attention", cache_dir=tmp_path)
    assert torch.backends.mha.get_fastpath_enabled()
    ops = {n.op_type for n in __import__("onnx").load(str(art.path)).graph.node}
    assert "MatMul" in ops and not list(tmp_path.glob("*.data"))
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"input_0": x.numpy()})[0], layer(x).numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("fmt", ["pt2", "tflite"] if ALL else ["pt2"])
def test_a_zoo_model_exports_to_the_other_formats(tmp_path, fmt):
    """.pt2 here; TFLite (litert-torch, minutes per network) with LATKIT_TEST_ZOO_ALL=1 and in the benchmark."""
    if fmt == "tflite":
        pytest.importorskip("litert_torch")
    art = zoo.export("mobilenet_v3_small", fmt, resolution=32, cache_dir=tmp_path)
    assert art.format == fmt and art.path.stat().st_size > 0


def test_export_all_records_failures_without_stopping(tmp_path, monkeypatch):
    real = zoo.build

    def build(name, resolution=None):
        if name.startswith("squeezenet1_1"):
            raise RuntimeError("converter says no")
        return real(name, resolution)
    monkeypatch.setattr(zoo, "build", build)
    done, failed = zoo.export_all(["squeezenet1_1", "mobilenet_v3_small"], "onnx", resolution=32, cache_dir=tmp_path)
    assert list(done) == ["mobilenet_v3_small"] and "converter says no" in failed["squeezenet1_1"]
