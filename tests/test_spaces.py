"""Search spaces as real networks: encodings round-trip, networks build, export, run, and count right."""
import json
import tracemalloc

import numpy as np
import onnxruntime as ort
import pytest
import torch

from latkit.collector import LatkitError
from latkit.collector.samplers import sample
from latkit.collector.spaces import SPACES, count_flops, get_space

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def test_nb201_enumerates_and_round_trips():
    s = get_space("nb201")
    archs = s.enumerate()
    assert len(archs) == len(set(archs)) == 15625 == s.size
    assert all(s.format(s.parse(a)) == a for a in archs)
    x = s.onehot(archs)
    assert x.shape == (15625, 30) and np.all(x.sum(1) == 6) and len(np.unique(x, axis=0)) == 15625


def test_nb201_param_count_matches_paper():
    """NAS-Bench-201: the all-nor_conv_3x3 network has ~1.53 M parameters at 10 classes."""
    assert s_params("nb201", ALL_CONV3) == pytest.approx(1.53e6, rel=0.005)
    assert get_space("nb201", num_classes=100).params(ALL_CONV3) > s_params("nb201", ALL_CONV3)


def s_params(space, arch):
    return sum(p.numel() for p in get_space(space).build(arch).parameters())


@pytest.mark.parametrize("space", ["fbnet", "ofa"])
def test_sampled_archs_round_trip(space):
    s = get_space(space)
    archs = s.sample(300, np.random.default_rng(3))
    assert all(s.format(s.parse(a)) == a for a in archs)
    assert len(set(archs)) == 300
    x = s.onehot(archs)
    assert x.shape[0] == 300 and len(np.unique(x, axis=0)) > 290


@pytest.mark.parametrize("space,classes", [("nb201", 10), ("fbnet", 100), ("ofa", 1000)])
def test_build_export_run(space, classes, export_cache):
    """Each space builds, exports to ONNX and TFLite, and runs in onnxruntime with the right output shape;
    the analytic FLOPs equal torch's FlopCounterMode."""
    from ai_edge_litert.interpreter import Interpreter
    from latkit.collector import export
    s = get_space(space)
    arch = s.sample(1, np.random.default_rng(0))[0]
    if space == "ofa":  # the smallest resolution keeps the TFLite conversion quick
        arch = s.format(dict(s.parse(arch), r=128))
    shape = s.input_shape(arch, batch_size=2)
    assert shape == (2, 3, 128 if space == "ofa" else 32, 128 if space == "ofa" else 32)
    module = s.build(arch)
    assert module(torch.randn(shape)).shape == (2, classes)
    assert s.flops(arch) == count_flops(s.build(arch, device="meta"), s.input_shape(arch))

    onnx_art = export(module, (torch.randn(shape),), "onnx", space=space, arch=arch, cache_dir=export_cache)
    sess = ort.InferenceSession(str(onnx_art.path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input_0": np.random.randn(*shape).astype(np.float32)})[0].shape == (2, classes)
    tfl = export(module, (torch.randn(1, *shape[1:]),), "tflite", space=space, arch=arch, cache_dir=export_cache)
    it = Interpreter(model_path=str(tfl.path))
    it.allocate_tensors()
    it.invoke()
    assert tuple(it.get_tensor(it.get_output_details()[0]["index"]).shape) == (1, classes)


def test_flops_are_analytic_and_exact():
    for name in SPACES:
        s = get_space(name)
        for arch in s.sample(3, np.random.default_rng(1)):
            assert s.flops(arch) == count_flops(s.build(arch, device="meta"), s.input_shape(arch))


def test_ofa_inactive_blocks_do_not_change_the_network():
    s = get_space("ofa")
    a = s.parse(s.sample(1, np.random.default_rng(2))[0])
    a["d"] = [2, 2, 2, 2, 2]
    b = json.loads(json.dumps(a))
    b["ks"][3], b["e"][3] = (7 if a["ks"][3] != 7 else 3), (6 if a["e"][3] != 6 else 3)  # block 4 of stage 1
    fa, fb = s.format(a), s.format(b)
    assert fa != fb and s.flops(fa) == s.flops(fb)
    assert np.array_equal(s.onehot([fa]), s.onehot([fb]))


@pytest.mark.parametrize("space,arch,message", [
    ("nb201", "|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|", "node 2 is '|nor_conv_3x3~0|', expected 2 edge"),
    ("nb201", "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "edge 1 (node 1 <- node 0) has unknown op 'conv'"),
    ("nb201", "|none~0|+|none~0|none~1|", "expected 3"),
    ("fbnet", ",".join(["k3_e1"] * 21), "21 layers given, expected 22"),
    ("fbnet", ",".join(["k3_e1"] * 5 + ["k7_e9"] + ["skip"] * 16), "layer 5 has unknown op 'k7_e9'"),
    ("ofa", '{"ks":[3],"e":[3],"d":[2],"r":128}', "ks has 1 values, expected 20"),
    ("ofa", json.dumps({"ks": [3] * 20, "e": [3] * 20, "d": [2, 2, 5, 2, 2], "r": 128}), "d[2] = 5 is out of range"),
    ("ofa", json.dumps({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 130}), "r = 130 is out of range"),
    ("ofa", "not json", "not JSON"),
])
def test_invalid_arch_names_position_and_allowed_values(space, arch, message):
    with pytest.raises(LatkitError) as e:
        get_space(space).validate(arch)
    assert message in str(e.value) and "allowed:" in str(e.value)


def test_unknown_space_lists_known():
    with pytest.raises(LatkitError, match="unknown space 'nb101'; known spaces: nb201, fbnet, ofa, zoo"):
        get_space("nb101")


@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("sampler", ["uniform", "balanced", "diverse"])
def test_samplers_reproducible_and_distinct(space, sampler):
    s = get_space(space)
    a, b = sample(s, 40, sampler, seed=5), sample(s, 40, sampler, seed=5)
    assert a == b and len(set(a)) == 40
    assert sample(s, 40, sampler, seed=6) != a


def test_balanced_covers_the_flops_range():
    """Balanced sampling spreads over the proxy's range: more of the tails than uniform sampling gets."""
    s = get_space("nb201")
    all_flops = np.array([s.flops(a) for a in s.enumerate()])
    lo, hi = np.percentile(all_flops, [10, 90])
    bal = np.array([s.flops(a) for a in sample(s, 100, "balanced", seed=0)])
    uni = np.array([s.flops(a) for a in sample(s, 100, "uniform", seed=0)])
    tails = lambda f: np.mean((f < lo) | (f > hi))  # noqa: E731
    assert tails(bal) > tails(uni) + 0.15
    assert bal.min() == all_flops.min() and np.ptp(bal) > 0.95 * np.ptp(all_flops)
    hist = lambda f: np.histogram(f, bins=10, range=(all_flops.min(), all_flops.max()))[0]  # noqa: E731
    assert hist(bal).min() >= 1 and hist(uni).min() == 0  # every tenth of the range, which uniform misses


def test_diverse_covers_the_encoding():
    """k-means sampling represents a structured space better: archs of a 2,000-arch OFA pool lie nearer to
    a chosen one than with uniform sampling (the k-means objective). On nb201/fbnet one-hot, a uniform
    product of choices, uniform sampling is already as good."""
    from latkit.collector.samplers import sample_from
    s = get_space("ofa")
    pool = s.sample(2000, np.random.default_rng(0))
    x = s.onehot(pool)
    x = (x - x.mean(0)) / x.std(0)
    index = {a: i for i, a in enumerate(pool)}
    coverage = lambda chosen: np.mean(np.min(((x[:, None] - x[[index[a] for a in chosen]][None]) ** 2).sum(-1), 1))  # noqa
    for seed in (0, 1):
        assert coverage(sample_from(s, pool, 30, "diverse", seed)) < 0.95 * coverage(sample_from(s, pool, 30, "uniform", seed))


def test_diverse_memory_stays_linear_in_the_pool():
    """OFA n=1000 clusters a 20,000-arch pool into 1,000 centres; a centres x pool x features array would
    be 12.8 GB, distances a block of centres at a time stay within a few tens of MB."""
    tracemalloc.start()
    try:
        chosen = sample(get_space("ofa"), 1000, "diverse", seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(set(chosen)) == 1000 and peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_sampler_bad_input():
    s = get_space("nb201")
    with pytest.raises(LatkitError, match="unknown sampler 'best'; choose one of uniform, balanced, diverse"):
        sample(s, 5, "best")
    with pytest.raises(LatkitError, match="cannot draw 20000 distinct archs from nb201"):
        sample(s, 20000)


@pytest.mark.parametrize("name", list(SPACES))
def test_a_space_is_a_value_that_owns_its_encodings(name):
    """Predictor code takes the Space (or its name) and asks it: graph vocab, adjacency, node ops, analytic
    costs and proxies are the space's own, the same whichever way it was given."""
    from latkit.collector.spaces import as_space
    from latkit.predictor.encodings import encode, graphs
    s = get_space(name)
    assert as_space(s) is s and as_space(name) == s and hash(as_space(name)) == hash(s)
    assert get_space(name, num_classes=7) != s
    archs = s.sample(5, np.random.default_rng(0))
    for kind in ("onehot", "analytic", "features", "proxies"):
        np.testing.assert_array_equal(encode(s, archs, kind), encode(name, archs, kind))
    adj, ops, extra = graphs(s, archs)
    assert adj.shape == (ops.shape[1],) * 2 and ops.shape[0] == 5 and extra.shape == (5, 1)
    assert ops[:, 0].tolist() == [0] * 5 and ops[:, -1].tolist() == [1] * 5 and ops.max() < len(s.graph_vocab)
    counts = encode(s, archs, "proxies")[:, 4:]
    assert counts.shape[1] == len(s.graph_vocab) - 2 - (name == "nb201")  # nb201 counts every op but none
    with pytest.raises(LatkitError, match=f"invalid {name} arch"):
        s.graph("nonsense")


@pytest.mark.parametrize("sampler", ["uniform", "balanced"])
def test_ofa_at_a_resolution_samples_only_archs_of_it_and_refuses_others(sampler):
    """README: with `--space ofa --resolution R` every sampled arch has r = R (the stored arch names its input); a
    resolution that contradicts an arch's r is refused; one off the 128-224 step-4 grid too."""
    sp = get_space("ofa").at_resolution(160)
    archs = sample(sp, 12, sampler, seed=3)
    assert len(set(archs)) == 12 and {json.loads(a)["r"] for a in archs} == {160}
    assert sp.input_shape(archs[0]) == (1, 3, 160, 160)
    other = json.dumps(dict(json.loads(archs[0]), r=128))
    with pytest.raises(LatkitError, match="ofa arch has r=128 but resolution 160 was asked"):
        sp.resolution(other)
    with pytest.raises(LatkitError):
        get_space("ofa").at_resolution(130)
