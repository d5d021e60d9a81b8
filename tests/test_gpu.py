"""The GPU path. Without CUDA (CI) the runner and telemetry must say so cleanly; with CUDA (the lent GPU
machine, scripts/gpu_e2e.py) they time for real. The CUDA tests need torch alone (no onnx, no TFLite
converter): their models are exported here, to .pt2 and TorchScript, and one agent times them all."""
import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from latkit.collector import Device, Job, LatkitError, Settings
from latkit.collector.runner import DeviceRunner
from conftest import AGENT, ROOT, tiny_cnn

torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def agent_module():
    spec = importlib.util.spec_from_file_location("agent", AGENT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cuda(**options) -> Settings:
    """CUDA settings built afresh, so the accelerator's defaults apply (graphs on, one round); ~0.1 s of
    timing per model. (dataclasses.replace of CPU settings would carry cuda_graphs=False over.)"""
    fast = dict(runtime="torch", accelerator="cuda", warmup_min_count=2, warmup_min_s=0.01, repeats_min_count=10,
                repeats_min_s=0.05, repeats_max_s=0.2)
    return Settings(**{**fast, **options})


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory):
    """The tiny CNN at batch 1 as torch.export .pt2 and as traced TorchScript (which also runs at other
    batch sizes: the GPU study exports once for batch 1 and 64)."""
    from latkit.collector import export
    cache = tmp_path_factory.mktemp("exports")
    x = torch.randn(1, 3, 32, 32)
    return {fmt: export(tiny_cnn(), (x,), fmt, arch=f"tiny_cnn_{fmt}", cache_dir=cache)
            for fmt in ("pt2", "torchscript")}


@pytest.fixture(scope="module")
def gpu():
    """One agent on the GPU for all the CUDA tests (each agent start costs seconds of torch and CUDA set-up)."""
    with DeviceRunner(Device("local")) as runner:
        yield runner


def test_collector_imports_without_the_ssh_extras():
    """A bare GPU machine has no paramiko, tomlkit or polars: timing on `local` must not need them."""
    code = ("import sys; sys.modules['paramiko'] = sys.modules['tomlkit'] = sys.modules['polars'] = None\n"
            "import latkit.collector, latkit.collector.cli, latkit.collector.scheduler\n"
            "from latkit.collector import Registry\n"
            "print(type(Registry().get('local').connect()).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "LocalTransport", out.stderr


def test_gpu_settings_are_checked():
    with pytest.raises(LatkitError, match="apply to accelerator cuda only"):
        Settings(dtype="float16")
    with pytest.raises(LatkitError, match="unknown accelerator 'tpu'"):
        Settings(accelerator="tpu")
    with pytest.raises(LatkitError, match="unknown dtype 'int8'"):
        Settings(accelerator="cuda", dtype="int8")


def test_cuda_defaults_are_graphs_and_one_round():
    assert (Settings(accelerator="cuda").cuda_graphs, Settings(accelerator="cuda").rounds) == (True, 1)
    assert (Settings().cuda_graphs, Settings().rounds) == (False, 4)
    assert Settings(accelerator="cuda", cuda_graphs=False).cuda_graphs is False


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU answers")
def test_without_cuda_the_answer_is_clean(artifacts, fast):
    fast_cuda = dataclasses.replace(fast, accelerator="cuda")
    with DeviceRunner(Device("local")) as r:
        with pytest.raises(LatkitError, match="sees no CUDA device; use accelerator cpu"):
            r.measure(Job(artifacts["pt2"], "local", dataclasses.replace(fast_cuda, runtime="torch")))
        with pytest.raises(LatkitError, match="no CUDAExecutionProvider"):
            r.measure(Job(artifacts["onnx"], "local", fast_cuda))
        with pytest.raises(LatkitError, match="tflite runner times on the CPU only"):
            r.measure(Job(artifacts["tflite"], "local", dataclasses.replace(fast_cuda, runtime="tflite")))
        assert r.measure(Job(artifacts["pt2"], "local", dataclasses.replace(fast, runtime="torch"))).status == "ok"


@pytest.mark.skipif(bool(shutil.which("nvidia-smi")), reason="checks the no-GPU telemetry")
def test_gpu_telemetry_absent_is_all_none():
    t = agent_module().gpu_telemetry()
    assert set(t) == {"gpu_sm_mhz", "gpu_mem_mhz", "gpu_temp_c", "gpu_power_w", "gpu_clocks_locked"}
    assert all(v is None for v in t.values())


@cuda_only
@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_cuda_graphs_are_the_default_and_the_row_says_so(gpu, torch_models, fmt):
    m = gpu.measure(Job(torch_models[fmt], "local", cuda()))
    assert m.status == "ok", m.error
    assert m.applied["cuda_graphs"] is True and m.applied["graph_fallback"] == ""
    assert 0 < m.stats.min_ms < 100 and m.stats.repeats >= 10 and len(m.round_ms) == 1
    row = m.to_row()
    assert row["accelerator"] == "cuda" and row["cuda_graphs"] is True and row["dtype"] == "float32"
    assert row["cudnn_benchmark"] is False  # heuristics, the same in every process; benchmark mode races
    assert row["launch_ms"] > 0 and row["launch_bound"] is False  # a replayed graph is not launch-bound
    assert row["telemetry_before_gpu_sm_mhz"] > 0 and row["telemetry_before_gpu_temp_c"] > 0
    assert row["telemetry_before_gpu_power_w"] > 0


@cuda_only
def test_no_cuda_graphs_times_eager_and_keeps_the_launch_time(gpu, torch_models):
    m = gpu.measure(Job(torch_models["pt2"], "local", cuda(cuda_graphs=False)))
    assert m.status == "ok", m.error
    assert m.applied["cuda_graphs"] is False and m.applied["graph_fallback"] == ""
    row = m.to_row()
    assert row["cuda_graphs"] is False and row["launch_ms"] > 0 and row["launch_bound"] in (True, False)


@cuda_only
@pytest.mark.parametrize("fmt,dtype", [("pt2", "float16"), ("pt2", "bfloat16"), ("torchscript", "float16")])
def test_half_dtypes_are_read_back(gpu, torch_models, fmt, dtype):
    m = gpu.measure(Job(torch_models[fmt], "local", cuda(dtype=dtype)))
    assert m.status == "ok", m.error
    assert m.applied["dtype"] == dtype and m.inputs[0]["dtype"] == dtype and m.to_row()["dtype"] == dtype
    assert m.applied["cuda_graphs"] is True


@cuda_only
def test_one_trace_serves_batch_64(gpu, torch_models):
    m = gpu.measure(Job(torch_models["torchscript"], "local", cuda(batch_size=64)))
    assert m.status == "ok", m.error
    row = m.to_row()
    assert row["input_shape"] == "64x3x32x32" and row["batch_size"] == 64 and row["cuda_graphs"] is True


@cuda_only
def test_cuda_graphs_cut_launch_overhead(gpu, tmp_path):
    """A deep, thin network at batch 1 is launch-bound: replaying it as a CUDA graph is faster."""
    from latkit.collector import export
    m = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
                              for _ in range(30)]).eval()
    art = export(m, (torch.randn(1, 8, 16, 16),), "pt2", arch="deep_thin", cache_dir=tmp_path)
    eager = gpu.measure(Job(art, "local", cuda(cuda_graphs=False, repeats_min_s=0.2)))
    graph = gpu.measure(Job(art, "local", cuda(repeats_min_s=0.2)))
    assert eager.status == graph.status == "ok"
    assert graph.applied["cuda_graphs"] is True and graph.latency_ms < eager.latency_ms


@cuda_only
def test_include_copies_times_or_says_why_not(gpu, torch_models):
    """Last of the shared agent's tests: a capture that fails here falls back to eager and says why."""
    m = gpu.measure(Job(torch_models["pt2"], "local", cuda(include_copies=True)))
    assert m.status == "ok", m.error
    assert m.applied["cuda_graphs"] or m.applied["graph_fallback"].startswith("capture failed")


@cuda_only
def test_probe_reports_the_gpu():
    out = subprocess.run([sys.executable, str(AGENT)], input='{"id":1,"op":"probe"}\n', capture_output=True,
                         text=True, timeout=120)
    frame = agent_module().FRAME  # replies are framed: other stdout lines are device noise
    probe = json.loads(next(x for x in out.stdout.splitlines() if x.startswith(frame))[len(frame):])["result"]
    assert probe["gpus"] and probe["runtimes"]["torch"]["cuda"] and probe["runtimes"]["torch"]["cuda_version"]
