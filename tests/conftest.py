"""Shared fixtures: small real models in every format, fast protocol settings, a numpy<2 tflite-runtime venv."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agents" / "agent.py"


def pytest_configure(config):
    """The machine-wide device lease (agents/agent.py) would make concurrent test runs on one machine wait for
    each other: each session gets its own default lease (inherited by every agent it starts locally)."""
    os.environ["LATKIT_LEASE"] = os.path.join(tempfile.mkdtemp(prefix="latkit-test-"), "lease")


def pytest_unconfigure(config):
    shutil.rmtree(os.path.dirname(os.environ.pop("LATKIT_LEASE", "/nonexistent/x")), ignore_errors=True)


def small_onnx_models(out: Path, widths, export_cache) -> Path:
    """Distinct small ONNX models (one conv of each width), written as `out`/w<width>.onnx."""
    import torch
    from latkit.collector import export
    for width in widths:
        m = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(width * 16 * 16, 10)).eval()
        a = export(m, (torch.randn(1, 3, 16, 16),), "onnx", arch=f"w{width}", cache_dir=export_cache)
        (out / f"w{width}.onnx").write_bytes(a.path.read_bytes())
    return out


def tiny_cnn():
    import torch
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="session")
def artifacts(export_cache):
    """The same tiny CNN exported to every format latkit times."""
    import torch
    from latkit.collector import export
    x = torch.randn(1, 3, 32, 32)
    return {fmt: export(tiny_cnn(), (x,), fmt, arch="tiny_cnn", cache_dir=export_cache)
            for fmt in ("onnx", "tflite", "pt2", "torchscript")}


@pytest.fixture
def reg(tmp_path):
    """A registry of one local device, `loc`, with its own workdir and lease (the machine-wide default lease is
    shared with whatever else runs here); modules that need more devices define their own."""
    from latkit.collector import Registry
    path = tmp_path / "devices.toml"
    path.write_text(f'[devices.loc]\ntransport = "local"\nworkdir = "{tmp_path / "loc"}"\n'
                    f'lease = "{tmp_path / "lease"}"\n')
    return Registry(path)


@pytest.fixture
def fast():
    """Settings that keep each measurement around 0.1 s."""
    from latkit.collector import Settings
    return Settings(warmup_min_count=2, warmup_min_s=0.01, repeats_min_count=10, repeats_min_s=0.05, rounds=1,
                    repeats_max_s=0.2)


def device_venv(name: str, packages: list) -> str:
    """A device's own Python environment (.venv-<name> in the repo; scripts/test builds them once)."""
    path = ROOT / f".venv-{name}"
    python = path / "bin" / "python"
    if not python.exists():
        venv.create(path, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
                       check=True)
    return str(python)


@pytest.fixture(scope="session")
def tflite_venv():
    """A realistic small-board environment: numpy<2 and tflite-runtime, nothing else."""
    return device_venv("tflite", ["numpy<2", "tflite-runtime"])


@pytest.fixture(scope="session")
def ort_venv():
    """A lean device environment: numpy 2, onnxruntime, ai-edge-litert, psutil (no torch)."""
    return device_venv("ort", ["numpy", "onnxruntime", "ai-edge-litert", "psutil"])


@pytest.fixture(scope="session")
def fleet(tflite_venv, ort_venv):
    """Three real sshd devices on 127.0.0.2-4: the host venv, the tflite-runtime venv, and the lean venv
    pinned to CPU 0 with taskset. Torn down after the session. Its state is under ~/.cache/latkit/fleets,
    not the pytest tmp dir: sshd refuses keys below world-writable /tmp."""
    from latkit.collector.loopback import new_fleet_dir, start_fleet, stop_fleet
    base = new_fleet_dir()
    devices = start_fleet(base, [sys.executable, tflite_venv, ort_venv], cores=[None, None, "0"])
    yield devices
    stop_fleet(base, remove=True)


@pytest.fixture(scope="session")
def registry(fleet, tmp_path_factory):
    """A registry with the three fleet devices added (host keys trusted on first contact)."""
    from latkit.collector import Registry, add_device
    reg = Registry(tmp_path_factory.mktemp("registry") / "devices.toml")
    for d in fleet:  # as `scripts/fleet up --register` does (each device its own lease)
        add_device(**d.add_kwargs(), registry=reg)
    return reg


@pytest.fixture
def agent_proc(tmp_path):
    """A raw agent subprocess speaking the JSON-lines protocol."""
    proc = subprocess.Popen([sys.executable, str(AGENT), "--workdir", str(tmp_path / "wd")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
