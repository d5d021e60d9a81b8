"""Model file formats: one table of format, file extensions, the runtime that times it and the packages that
write it. Every other map (extension -> format, format -> runtime, runtime -> exported format) derives from it;
the agent keeps its own copy (it imports nothing of latkit), which tests/test_structure.py compares."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    extensions: tuple  # the first is the one an exporter writes
    runtime: str
    converters: tuple  # the packages whose versions shape an exported file
    exported_for_runtime: bool = False  # what `collect --space` exports for `runtime`


TABLE = (
    Format("onnx", (".onnx",), "onnxruntime", ("torch", "onnx"), exported_for_runtime=True),
    Format("tflite", (".tflite",), "tflite", ("torch", "litert-torch"), exported_for_runtime=True),
    Format("pt2", (".pt2",), "torch", ("torch",), exported_for_runtime=True),
    Format("torchscript", (".pt", ".ts"), "torch", ("torch",)),
)
BY_NAME = {f.name: f for f in TABLE}
RUNTIMES = tuple(dict.fromkeys(f.runtime for f in TABLE))
FORMATS = {ext: f.name for f in TABLE for ext in f.extensions}  # extension -> format
RUNTIME_FOR_FORMAT = {f.name: f.runtime for f in TABLE}
EXTENSIONS = {f.name: f.extensions[0] for f in TABLE}  # format -> the extension an exporter writes
CONVERTERS = {f.name: f.converters for f in TABLE}
EXPORT_FORMAT = {f.runtime: f.name for f in TABLE if f.exported_for_runtime}  # runtime -> format exported for it
RUNTIME_OF_EXTENSION = {ext: f.runtime for f in TABLE for ext in f.extensions}
