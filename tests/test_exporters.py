"""Exporters produce real files that run, and export each network only once."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from latkit.collector import LatkitError, export
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
    assert bigger.sha256 != artifacts["onnx"].sha256 and bigger.inputs[0]["shape"] == [4, 3, 32, 32]


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
