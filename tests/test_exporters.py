"""Exporters produce real files that run, and export each network only once."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from latkit.collector import LatkitError, Settings, export
from conftest import tiny_cnn


def test_onnx_matches_torch(artifacts):
    x = torch.randn(2, 3, 32, 32)
    art = artifacts["onnx"]
    assert art.path.name == f"{art.sha256}.onnx" and art.space == "custom" and art.arch == "tiny_cnn"
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_0": x[:1].numpy()})[0]
    np.testing.assert_allclose(got, tiny_cnn()(x[:1]).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_tflite_matches_torch(artifacts):
    from ai_edge_litert.interpreter import Interpreter
    x = torch.randn(1, 3, 32, 32)
    it = Interpreter(model_path=str(artifacts["tflite"].path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x.numpy())
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, tiny_cnn()(x).detach().numpy(), rtol=1e-3, atol=1e-4)


def test_export_is_cached(artifacts, export_cache):
    x = torch.randn(1, 3, 32, 32)
    mtime = artifacts["onnx"].path.stat().st_mtime_ns
    again = export(tiny_cnn(), (x,), "onnx", arch="tiny_cnn", cache_dir=export_cache)
    assert again.path == artifacts["onnx"].path and again.path.stat().st_mtime_ns == mtime

    other = tiny_cnn()
    with torch.no_grad():
        other[0].weight.add_(1.0)  # other weights: another file
    assert export(other, (x,), "onnx", cache_dir=export_cache).sha256 != artifacts["onnx"].sha256
    bigger = export(tiny_cnn(), (torch.randn(4, 3, 32, 32),), "onnx", cache_dir=export_cache)
    assert bigger.sha256 != artifacts["onnx"].sha256 and bigger.inputs[0].shape == (4, 3, 32, 32)


def test_export_errors(export_cache):
    with pytest.raises(LatkitError, match="unknown export format 'keras'"):
        export(tiny_cnn(), (torch.randn(1, 3, 32, 32),), "keras", cache_dir=export_cache)
    with pytest.raises(LatkitError, match="pt2 export of broken failed"):
        export(tiny_cnn(), (torch.randn(1, 5, 32, 32),), "pt2", arch="broken", cache_dir=export_cache)
    assert not list(export_cache.glob(".export-*"))  # no temporary file left behind


def test_parallel_export_is_the_serial_export_in_order(tmp_path):
    """Worker processes seed the weights by the arch as the serial path does: their export keys (which hash
    the weights) find the serial exports in the cache, and the artifacts come back in the order given."""
    from latkit.collector.api import iter_space_artifacts
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    archs = sample(get_space("nb201"), 3, "uniform", 1)
    serial = list(iter_space_artifacts("nb201", archs, "torchscript", cache_dir=tmp_path))
    mtimes = [a.path.stat().st_mtime_ns for a in serial]
    pooled = list(iter_space_artifacts("nb201", archs, "torchscript", workers=2, cache_dir=tmp_path))
    assert [a.arch for a in pooled] == archs
    assert [(a.path, a.sha256) for a in pooled] == [(a.path, a.sha256) for a in serial]
    assert [a.path.stat().st_mtime_ns for a in pooled] == mtimes  # found, not written again


def test_parallel_export_stays_a_bounded_distance_ahead(tmp_path):
    """A consumer that stops early leaves at most 1 + `ahead` files exported, not the whole list."""
    from latkit.collector.api import iter_space_artifacts
    from latkit.collector.samplers import sample
    from latkit.collector.spaces import get_space
    archs = sample(get_space("nb201"), 8, "uniform", 2)
    it = iter_space_artifacts("nb201", archs, "torchscript", workers=2, ahead=2, cache_dir=tmp_path)
    first = next(it)
    it.close()
    assert first.arch == archs[0] and 1 <= len(list(tmp_path.glob("*.pt"))) <= 3
    with pytest.raises(LatkitError, match="export workers must be a whole number >= 1, got 0"):
        next(iter_space_artifacts("nb201", archs, "torchscript", workers=0, cache_dir=tmp_path))


class Chatty(torch.nn.Module):
    """A network whose export fails after its C-level code has written to fd 1, as converters do."""

    def forward(self, x):
        import os
        os.write(1, b"converter: lowering op 7 of 9\nconverter: fatal: no kernel for op 7\n")
        raise RuntimeError("lowering failed")


def test_failed_export_keeps_the_converters_output(export_cache, capfd):
    with pytest.raises(LatkitError, match=r"torchscript export of chatty failed: lowering failed; the converter's "
                                          r"output is in .*logs/.*\.log") as e:
        export(Chatty(), (torch.randn(1, 3),), "torchscript", arch="chatty", cache_dir=export_cache)
    assert e.value.exit_code == 1  # a model that failed, not bad input
    log = str(e.value).rsplit(" is in ", 1)[1]
    assert "fatal: no kernel for op 7" in open(log).read()
    assert "no kernel" not in capfd.readouterr().out  # captured, not sprayed over stdout


# -- the export cache: found by (space, arch, batch, resolution, format, versions, seed), bounded --------------

NB = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"


def test_cached_arch_is_found_without_building_the_network(tmp_path, monkeypatch):
    from latkit.collector.api import export_arch
    from latkit.collector.spaces import NB201
    first = export_arch("nb201", NB, "torchscript", batch_size=2, cache_dir=tmp_path)
    mtime = first.path.stat().st_mtime_ns

    def refuse(*a, **k):
        raise AssertionError("built the network for a cached arch")
    monkeypatch.setattr(NB201, "build", refuse)
    again = export_arch("nb201", NB, "torchscript", batch_size=2, cache_dir=tmp_path)
    assert (again.path, again.sha256, again.inputs) == (first.path, first.sha256, first.inputs)
    assert again.inputs[0].shape == (2, 3, 32, 32) and again.path.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="built the network"):  # another batch is another file
        export_arch("nb201", NB, "torchscript", batch_size=1, cache_dir=tmp_path)


def test_export_key_names_every_input_and_a_change_misses(tmp_path, monkeypatch):
    import dataclasses
    from latkit.collector import api
    spec = api.arch_spec("nb201", NB, "onnx", 1)
    from importlib import metadata
    assert dict(spec.versions)["torch"] == metadata.version("torch") and spec.resolution == 32
    assert {"torch", "onnx", "latkit-export-recipe"} <= set(dict(spec.versions))
    variants = [dataclasses.replace(spec, **{k: v}) for k, v in
                [("arch", NB.replace("none", "skip_connect")), ("batch_size", 2), ("resolution", 64),
                 ("format", "pt2"), ("weight_seed", 1), ("versions", (("torch", "0.0"),)),
                 ("space_options", (("num_classes", 100),))]]
    assert len({spec.key} | {v.key for v in variants}) == 8
    base = api.export_arch("nb201", NB, "torchscript", cache_dir=tmp_path)
    seeded = api.export_arch("nb201", NB, "torchscript", cache_dir=tmp_path, weight_seed=1)
    assert seeded.sha256 != base.sha256  # other weights, another file and job key
    from latkit.collector import pipeline
    monkeypatch.setattr(pipeline, "exporter_versions", lambda fmt: (("torch", "9.9"),))
    newer = api.export_arch("nb201", NB, "torchscript", cache_dir=tmp_path)
    assert len(list((tmp_path / "index").glob("*.json"))) == 3 and newer.path.exists()  # a miss: exported anew


def test_corrupt_cached_file_is_exported_again(tmp_path):
    from latkit.collector.api import export_arch
    from latkit.collector.job import sha256_file
    art = export_arch("nb201", NB, "torchscript", cache_dir=tmp_path)
    good = art.path.read_bytes()
    for corrupt in (good[: len(good) // 2], bytes(len(good))):  # truncated; same size, other bytes
        art.path.write_bytes(corrupt)
        again = export_arch("nb201", NB, "torchscript", cache_dir=tmp_path)
        assert sha256_file(again.path) == again.sha256 and again.path.read_bytes() != corrupt
        art, good = again, again.path.read_bytes()
    art.path.touch()  # touched but intact: re-hashed once, kept
    assert export_arch("nb201", NB, "torchscript", cache_dir=tmp_path).path.read_bytes() == good


def test_eviction_order():
    from latkit.collector.cache import CachedFile, evictions
    files = [CachedFile(c * 64, 10, t) for c, t in zip("abcd", (4, 1, 3, 2))]
    names = lambda fs: [f.sha256[0] for f in fs]  # noqa: E731
    assert names(evictions(files, 25)) == ["b", "d"]  # least recently used first
    assert names(evictions(files, 25, first={"c" * 64})) == ["c", "b"]  # measured everywhere first
    assert names(evictions(files, 0, keep={"b" * 64, "d" * 64})) == ["c", "a"]  # pending never
    assert evictions(files, 40) == []


def test_bounded_host_cache(tmp_path):
    import os
    import time
    from latkit.collector.api import export_arch
    from latkit.collector.cache import prune_host
    from latkit.collector.spaces import get_space
    archs = get_space("nb201").sample(4, np.random.default_rng(7))
    arts = []
    for i, a in enumerate(archs):
        arts.append(export_arch("nb201", a, "torchscript", cache_dir=tmp_path))
        for idx in (tmp_path / "index").glob("*.json"):  # distinct last uses, oldest first
            if arts[-1].sha256 in idx.read_text():
                os.utime(idx, (time.time() - 100 + i, time.time() - 100 + i))
    sizes = [a.path.stat().st_size for a in arts]
    limit = sum(sizes[2:]) + 1
    freed = prune_host(tmp_path, limit / 2 ** 30, keep={arts[0].sha256})
    assert [a.path.exists() for a in arts] == [True, False, False, True] and freed == sizes[1] + sizes[2]
    again = export_arch("nb201", archs[1], "torchscript", cache_dir=tmp_path)  # evicted: exported again
    assert again.path.exists() and again.arch == archs[1]


def test_export_workers_default():
    from latkit.collector.api import export_plan
    from latkit.collector.devices import Device
    local, remote = Device(name="local", transport="local"), Device(name="pi", transport="ssh", host="h")
    plan = export_plan([remote], None, {0, 1, 2, 3})
    assert (plan.workers, plan.stream) == (3, True)
    plan = export_plan([local], Settings(cores=(0,)), {0, 1, 2, 3})
    assert (plan.workers, plan.cores, plan.stream) == (3, (1, 2, 3), True) and "apart from" in plan.why
    plan = export_plan([local], Settings(cores=(2, 3)), {0, 1, 2, 3})
    assert (plan.workers, plan.cores) == (2, (0, 1))
    plan = export_plan([local, remote], None, {0, 1})  # exports would share the local device's cores: first
    assert (plan.workers, plan.cores, plan.stream) == (1, None, False) and "not pinned" in plan.why
    plan = export_plan([local], Settings(cores=(0, 1)), {0, 1})
    assert (plan.workers, plan.stream) == (1, False)
