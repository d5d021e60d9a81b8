"""Each runner times a real model in a real runtime; failures come back as typed values."""
import dataclasses
import os

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from latkit.collector import Artifact, Device, Job, LatkitError
from latkit.collector.runner import DeviceRunner


@pytest.fixture(scope="module")
def local_runner():
    with DeviceRunner(Device("local")) as r:
        yield r


@pytest.mark.parametrize("fmt,runtime", [("onnx", "onnxruntime"), ("tflite", "tflite"), ("pt2", "torch"),
                                         ("torchscript", "torch")])
def test_runner_times_real_model(local_runner, artifacts, fast, fmt, runtime):
    job = Job(artifacts[fmt], "local", dataclasses.replace(fast, runtime=runtime))
    m = local_runner.measure(job)
    assert m.status == "ok", m.error
    assert m.stats.repeats == len(m.samples_ms) >= fast.repeats_min_count * fast.rounds
    assert 0 < m.stats.min_ms <= m.latency_ms <= m.stats.p90_ms
    assert m.input_shape == "1x3x32x32"
    assert m.runtime_version == local_runner.probe["runtimes"][runtime]["version"]


def test_threads_and_batch_size_reach_the_runtime(local_runner, export_cache, fast):
    """A dynamic batch dimension is filled from batch_size; the row records the shape actually run."""
    import torch
    from conftest import tiny_cnn
    path = export_cache / "dyn.onnx"
    torch.onnx.export(tiny_cnn(), (torch.randn(1, 3, 32, 32),), str(path), input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    art = Artifact.from_file(path)
    m1 = local_runner.measure(Job(art, "local", dataclasses.replace(fast, batch_size=1)))
    m8 = local_runner.measure(Job(art, "local", dataclasses.replace(fast, batch_size=8, threads=2)))
    assert m1.input_shape == "1x3x32x32" and m8.input_shape == "8x3x32x32"
    assert m8.to_row()["batch_size"] == 8 and m8.to_row()["threads"] == 2
    # what the runtime read back, not the host's echo of what it asked for
    assert m8.to_row()["threads_applied"] == 2 and m1.to_row()["threads_applied"] == fast.threads
    assert m8.latency_ms > m1.latency_ms  # eight images take longer than one


def test_core_pinning(local_runner, artifacts, fast):
    """The row holds the affinity the agent read at timing time, and a pinning does not stick to the next job."""
    m = local_runner.measure(Job(artifacts["onnx"], "local", dataclasses.replace(fast, cores=(0,))))
    assert m.status == "ok" and m.to_row()["cores"] == "0" and m.to_row()["cores_applied"] == "0"
    free = local_runner.measure(Job(artifacts["onnx"], "local", fast))
    assert free.to_row()["cores_applied"] == ",".join(map(str, sorted(os.sched_getaffinity(0))))
    with pytest.raises(LatkitError, match="cannot pin"):
        local_runner.measure(Job(artifacts["onnx"], "local", dataclasses.replace(fast, cores=(4096,))))


@pytest.mark.parametrize("suffix,runtime", [(".onnx", "onnxruntime"), (".tflite", "tflite"), (".pt2", "torch")])
def test_corrupt_model_is_a_stored_error(local_runner, tmp_path, fast, suffix, runtime):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"\x00not a model at all" * 10)
    m = local_runner.measure(Job(Artifact.from_file(bad), "local", dataclasses.replace(fast, runtime=runtime)))
    assert m.status == "error" and m.error_kind == "corrupt_model"
    assert m.to_row()["latency_ms"] is None and m.to_row()["error"]


def test_unsupported_op(local_runner, tmp_path, fast):
    node = oh.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "custom.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.example", 1)]), path)
    m = local_runner.measure(Job(Artifact.from_file(path), "local", fast))
    assert m.error_kind == "unsupported_op" and "FancyOp" in m.error


def test_agent_survives_errors(local_runner, artifacts, fast):
    """After the failures above the same agent process still measures."""
    pid = local_runner.transport.pid
    assert local_runner.measure(Job(artifacts["onnx"], "local", fast)).status == "ok"
    assert local_runner.transport.pid == pid


def test_tflite_in_numpy1_tflite_runtime_venv(tflite_venv, artifacts, fast, tmp_path):
    """A device whose Python has only numpy<2 and tflite-runtime: the agent falls back to tflite_runtime."""
    # another "device" on this machine while local_runner holds the machine's lease: it needs its own lease
    with DeviceRunner(Device("tfl-device", python=tflite_venv, workdir=str(tmp_path),
                             lease=str(tmp_path / "lease"))) as r:
        assert set(r.probe["runtimes"]) == {"tflite"}
        assert r.probe["runtimes"]["tflite"]["module"] == "tflite_runtime"
        m = r.measure(Job(artifacts["tflite"], "tfl-device", dataclasses.replace(fast, runtime="tflite")))
        assert m.status == "ok" and m.runtime_version.startswith("2.14")
        with pytest.raises(LatkitError, match="onnxruntime is not installed"):
            r.measure(Job(artifacts["onnx"], "tfl-device", fast))


def test_inputs_are_seeded():
    """Generated inputs come from the seed: the same seed gives the same tensors, another seed others."""
    import importlib.util
    from conftest import AGENT
    spec = importlib.util.spec_from_file_location("agent", AGENT)
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    make = lambda seed: agent._make_input(np, np.random.default_rng(seed), [1, 3, 8, 8], "float32")  # noqa: E731
    assert np.array_equal(make(0), make(0)) and not np.array_equal(make(0), make(1))
