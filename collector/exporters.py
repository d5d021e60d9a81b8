"""Exporters: torch nn.Module -> ONNX, TFLite (litert-torch), torch.export .pt2 or TorchScript Artifact.

Exports are cached by content: the cache key hashes the module's structure, its weights, the example
inputs, the format and the exporter's version, and the file is stored under its own sha256, so the same
network is exported once however often it is asked for. What a converter prints is captured; when an
export fails it is kept in <cache>/logs/<key>.log, named in the error and shown with -v.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

from .errors import Failure, LatkitError
from .job import Artifact, sha256_file

log = logging.getLogger("latkit")

EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite", "pt2": ".pt2", "torchscript": ".pt"}
DEFAULT_CACHE = Path(os.environ.get("LATKIT_CACHE", Path.home() / ".cache" / "latkit" / "exports"))


def _exporter_version(fmt: str) -> str:
    import torch
    from importlib import metadata
    extra = {"onnx": "onnx", "tflite": "litert-torch"}.get(fmt)
    return torch.__version__ + (f"+{extra}-{metadata.version(extra)}" if extra else "")


def export_key(module, example_inputs: Sequence, fmt: str) -> str:
    """sha256 over what determines the exported file (structure, weights, inputs, format, exporter)."""
    h = hashlib.sha256()
    h.update(f"{fmt}\n{_exporter_version(fmt)}\n{module!r}\n".encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().float().contiguous().numpy().tobytes())
    for x in example_inputs:
        h.update(f"{tuple(x.shape)}{x.dtype}".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _captured(log_path: Path):
    """Send fds 1 and 2 to `log_path` while converters run (litert-torch and its C++ log chatter keeps
    stdout free for results); the caller keeps the file when the export fails and deletes it otherwise."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "wb") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _write(module, example_inputs: tuple, fmt: str, path: str) -> None:
    import torch
    names = [f"input_{i}" for i in range(len(example_inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            # The TorchScript-based exporter is ~50x faster than dynamo on small nets; dynamo is the fallback.
            try:
                torch.onnx.export(module, example_inputs, path, input_names=names, dynamo=False, opset_version=17)
            except Exception:
                torch.onnx.export(module, example_inputs, path, input_names=names, dynamo=True, verbose=False)
        elif fmt == "tflite":
            try:
                import litert_torch
            except ImportError:
                raise LatkitError("TFLite export needs litert-torch; pip install 'latkit[tflite]'") from None
            litert_torch.convert(module, example_inputs).export(path)
        elif fmt == "pt2":
            torch.export.save(torch.export.export(module, example_inputs), path)
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, example_inputs), path)


def export(module, example_inputs: Sequence, fmt: str = "onnx", space: str = "custom", arch: str = "",
           cache_dir: Optional[Path] = None) -> Artifact:
    """Export `module` (in eval mode) for `example_inputs` to `fmt`; cached, so repeated calls are free."""
    if fmt not in EXTENSIONS:
        raise LatkitError(f"unknown export format {fmt!r}; choose one of {', '.join(EXTENSIONS)}")
    import torch
    cache = Path(cache_dir or DEFAULT_CACHE)
    (cache / "index").mkdir(parents=True, exist_ok=True)
    example_inputs = tuple(example_inputs)
    module = module.eval()
    inputs = tuple({"name": f"input_{i}", "shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}
                   for i, x in enumerate(example_inputs))
    key = export_key(module, example_inputs, fmt)
    index = cache / "index" / f"{key}.json"
    if index.exists():
        sha = json.loads(index.read_text())["sha256"]
        path = cache / f"{sha}{EXTENSIONS[fmt]}"
        if path.exists():
            return Artifact(path=path, sha256=sha, format=fmt, space=space, arch=arch, inputs=inputs)
    fd, tmp = tempfile.mkstemp(suffix=EXTENSIONS[fmt], dir=cache, prefix=".export-")
    os.close(fd)
    (cache / "logs").mkdir(exist_ok=True)
    log_path = cache / "logs" / f"{key}.log"
    try:
        with torch.no_grad(), _captured(log_path):
            _write(module, example_inputs, fmt, tmp)
        sha = sha256_file(Path(tmp))
        path = cache / f"{sha}{EXTENSIONS[fmt]}"
        os.replace(tmp, path)
        log_path.unlink()
    except Exception as e:
        output = log_path.read_text(errors="replace").strip()
        if output:
            log.debug("%s converter output:\n%s", fmt, output)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kept = f"; the converter's output is in {log_path}" if output else ""
        if not output:
            log_path.unlink()
        if isinstance(e, LatkitError):
            raise type(e)(f"{e}{kept}") from None
        raise Failure(f"{fmt} export of {arch or type(module).__name__} failed: {why}{kept}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    index_tmp = index.with_suffix(".tmp")
    index_tmp.write_text(json.dumps({"sha256": sha, "format": fmt}))
    os.replace(index_tmp, index)
    return Artifact(path=path, sha256=sha, format=fmt, space=space, arch=arch, inputs=inputs)
