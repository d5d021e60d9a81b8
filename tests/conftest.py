"""Shared fixtures: small real models in every format, fast protocol settings, a numpy<2 tflite-runtime venv."""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agents" / "agent.py"


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
    from collector import export
    x = torch.randn(1, 3, 32, 32)
    return {fmt: export(tiny_cnn(), (x,), fmt, arch="tiny_cnn", cache_dir=export_cache)
            for fmt in ("onnx", "tflite", "pt2", "torchscript")}


@pytest.fixture
def fast():
    """Settings that keep each measurement around 0.1 s."""
    from collector import Settings
    return Settings(warmup_min_count=2, warmup_min_s=0.01, repeats_min_count=10, repeats_min_s=0.05,
                    repeats_max_s=0.2)


@pytest.fixture(scope="session")
def tflite_venv():
    """A realistic device environment: its own Python with numpy<2 and tflite-runtime, nothing else.

    scripts/test builds it once (LATKIT_TFLITE_VENV); without that, it is built here.
    """
    path = Path(os.environ.get("LATKIT_TFLITE_VENV", ROOT / ".venv-tflite"))
    python = path / "bin" / "python"
    if not python.exists():
        venv.create(path, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy<2", "tflite-runtime"], check=True)
    return str(python)


@pytest.fixture
def agent_proc(tmp_path):
    """A raw agent subprocess speaking the JSON-lines protocol."""
    proc = subprocess.Popen([sys.executable, str(AGENT), "--workdir", str(tmp_path / "wd")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
