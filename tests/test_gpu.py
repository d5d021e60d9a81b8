"""The GPU path. Without CUDA (CI) the runner and telemetry must say so cleanly; with CUDA (the lent GPU
machine, scripts/gpu_tests) they time for real."""
import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from collector import Device, Job, LatkitError, Settings
from collector.runner import DeviceRunner
from conftest import AGENT

torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def agent_module():
    spec = importlib.util.spec_from_file_location("agent", AGENT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_collector_imports_without_the_ssh_extras():
    """A bare GPU machine has no paramiko or tomli-w: timing on `local` must not need them."""
    code = ("import sys; sys.modules['paramiko'] = sys.modules['tomli_w'] = None\n"
            "import collector, collector.cli, collector.scheduler\n"
            "from collector import Registry\n"
            "print(type(Registry().get('local').connect()).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "LocalTransport", out.stderr


def test_gpu_settings_are_checked():
    with pytest.raises(LatkitError, match="apply to accelerator cuda only"):
        Settings(dtype="float16")
    with pytest.raises(LatkitError, match="unknown accelerator 'tpu'"):
        Settings(accelerator="tpu")
    with pytest.raises(LatkitError, match="unknown dtype 'int8'"):
        Settings(accelerator="cuda", dtype="int8")


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
@pytest.mark.parametrize("options", [{}, {"cuda_graphs": True}, {"dtype": "float16"}, {"include_copies": True},
                                     {"dtype": "bfloat16", "cuda_graphs": True}])
def test_cuda_runner_times_on_the_gpu(artifacts, fast, options):
    s = dataclasses.replace(fast, runtime="torch", accelerator="cuda", **options)
    with DeviceRunner(Device("local")) as r:
        m = r.measure(Job(artifacts["pt2"], "local", s))
    assert m.status == "ok", m.error
    assert 0 < m.stats.min_ms < 100 and m.stats.repeats >= fast.repeats_min_count
    row = m.to_row()
    assert row["accelerator"] == "cuda" and row["telemetry_before_gpu_sm_mhz"] > 0
    assert row["telemetry_before_gpu_temp_c"] > 0 and row["telemetry_before_gpu_power_w"] > 0


@cuda_only
def test_cuda_graphs_cut_launch_overhead(fast):
    """A deep, thin network at batch 1 is launch-bound: replaying it as a CUDA graph is faster."""
    from collector import export
    m = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
                              for _ in range(30)]).eval()
    art = export(m, (torch.randn(1, 8, 16, 16),), "pt2", arch="deep_thin")
    base = dataclasses.replace(fast, runtime="torch", accelerator="cuda", repeats_min_s=0.2)
    with DeviceRunner(Device("local")) as r:
        eager = r.measure(Job(art, "local", base)).latency_ms
        graph = r.measure(Job(art, "local", dataclasses.replace(base, cuda_graphs=True))).latency_ms
    assert graph < eager


@cuda_only
def test_probe_reports_the_gpu():
    out = subprocess.run([sys.executable, str(AGENT)], input='{"id":1,"op":"probe"}\n', capture_output=True,
                         text=True, timeout=120)
    probe = json.loads(out.stdout)["result"]
    assert probe["gpus"] and probe["runtimes"]["torch"]["cuda"] and probe["runtimes"]["torch"]["cuda_version"]
