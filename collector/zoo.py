"""A kept model zoo: a fixed, named set of real networks (torchvision's definitions, random weights) to time.

Search spaces (collector/spaces) are cells and supernets; users time whole networks of 2-120 ms. The zoo
names >= 20 of them, from squeezenet and mobilenet to resnet50 / convnext_tiny / efficientnet / regnet, plus
a few detection and segmentation backbones, so a benchmark (scripts/bench_models.py) or a predictor can
refer to "the same networks" across runs and machines.

Names. A zoo name is `FAMILY[k=v,...]@RES`, every part but FAMILY optional:

    resnet18                     resnet18 at the zoo's resolution (224)
    resnet18@160                 the same network at 160x160
    mobilenet_v2[width_mult=0.75]@192   a width variant (a keyword of torchvision's builder) at 192
    fasterrcnn_mobilenet_v3_large_fpn.backbone   the backbone (+FPN) of a detector, its feature maps out

`canonical(name)` writes keywords sorted and drops `@224`, so equal networks have one name; the weights are
seeded from the canonical name (sha256), so a name is a network, on every machine. `ZOO` is the fixed set
(its order and names are kept stable: tests check them); variants of its families are built on demand
(issue 25 wants width/depth/resolution variants for a graph predictor).

torchvision. Only its model definitions are used; its C++ ops (nms, roi_align, ...) are not. A torchvision
wheel whose `_C` does not load beside the installed torch (a CUDA torchvision beside torch+cpu) fails at
import in `_meta_registrations`, which registers fake kernels for those ops unconditionally. `torchvision()`
imports it normally and, only when that fails for this reason, again with that one module replaced by an
empty one (nothing the zoo builds calls those ops; `tests/test_zoo.py` checks the import and every build).

Exports go through latkit's exporters (`export_cached`) under a key computed from the name, format,
batch, torchvision version and exporter versions, without building the network (like search-space archs),
so a resumed benchmark finds its files by a stat.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import types
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import LatkitError

RESOLUTION = 224  # the zoo's default input resolution (square, RGB)
ZOO_RECIPE = 1  # bump when a zoo network is built differently in a way torchvision's version does not show


@dataclasses.dataclass(frozen=True)
class Entry:
    """A zoo family: how to build it from torchvision. `kind`: classifier, detection or segmentation
    (backbone); `builder`: the torchvision function (in `module`); `attr`: a submodule to keep (`backbone`);
    `kwargs`: fixed keywords; `min_resolution`: the smallest input the network takes."""

    family: str
    kind: str
    module: str
    builder: str
    attr: Optional[str] = None
    kwargs: tuple = ()
    min_resolution: int = 32
    resolution_kwarg: Optional[str] = None  # a builder keyword that must equal the input resolution (ViT)
    attention: bool = False  # traced with torch's MHA fast path off (see _no_fastpath)


def _c(name, **kw):
    return Entry(name, "classifier", "torchvision.models", name, kwargs=tuple(sorted(kw.items())))


# The fixed set, fastest families first (roughly; 1 thread, 224x224, ONNX Runtime on a 2-vCPU EPYC VM spans
# ~2-120 ms). Keep names and order stable: a benchmark's JSON and a dataset refer to them.
FAMILIES = [
    _c("mobilenet_v3_small"), _c("shufflenet_v2_x0_5"), _c("mnasnet0_5"), _c("shufflenet_v2_x1_0"),
    _c("squeezenet1_1"), _c("mobilenet_v3_large"), _c("mnasnet1_0"), _c("mobilenet_v2"), _c("squeezenet1_0"),
    _c("regnet_x_400mf"), _c("regnet_y_400mf"), _c("efficientnet_b0"), _c("regnet_y_800mf"),
    _c("efficientnet_b1"), _c("googlenet", aux_logits=False, init_weights=True), _c("resnet18"),
    _c("regnet_x_1_6gf"), _c("densenet121"), _c("resnet34"), _c("efficientnet_v2_s"), _c("resnet50"),
    _c("convnext_tiny"),
    Entry("vit_b_32", "classifier", "torchvision.models", "vit_b_32", min_resolution=32,
          resolution_kwarg="image_size", attention=True),
    Entry("fasterrcnn_mobilenet_v3_large_fpn.backbone", "detection", "torchvision.models.detection",
          "fasterrcnn_mobilenet_v3_large_fpn", attr="backbone", kwargs=(("weights_backbone", None),)),
    Entry("ssdlite320_mobilenet_v3_large.backbone", "detection", "torchvision.models.detection",
          "ssdlite320_mobilenet_v3_large", attr="backbone", kwargs=(("weights_backbone", None),)),
    Entry("lraspp_mobilenet_v3_large", "segmentation", "torchvision.models.segmentation",
          "lraspp_mobilenet_v3_large", kwargs=(("weights_backbone", None),)),
    Entry("deeplabv3_mobilenet_v3_large", "segmentation", "torchvision.models.segmentation",
          "deeplabv3_mobilenet_v3_large", kwargs=(("weights_backbone", None), ("aux_loss", False))),
]
ENTRIES = {e.family: e for e in FAMILIES}
ZOO = tuple(e.family for e in FAMILIES)  # the fixed set, each at RESOLUTION

_NAME = re.compile(r"^(?P<family>[a-z0-9_.]+)(?:\[(?P<kw>[^\]]*)\])?(?:@(?P<res>[0-9]+))?$")


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """A parsed zoo name: family, builder keywords (sorted pairs) and input resolution."""

    family: str
    kwargs: tuple = ()
    resolution: int = RESOLUTION

    @property
    def name(self) -> str:
        kw = f"[{','.join(f'{k}={_fmt(v)}' for k, v in self.kwargs)}]" if self.kwargs else ""
        return self.family + kw + (f"@{self.resolution}" if self.resolution != RESOLUTION else "")

    @property
    def entry(self) -> Entry:
        return ENTRIES[self.family]

    def input_shape(self, batch_size: int = 1) -> tuple:
        return (batch_size, 3, self.resolution, self.resolution)


def _fmt(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    raise LatkitError(f"zoo keyword value {text!r} is not a number or True/False")


def parse(name: str, resolution: Optional[int] = None) -> ZooModel:
    """The ZooModel a name stands for; `resolution` (if given) replaces the name's `@RES`."""
    m = _NAME.match(name.strip()) if isinstance(name, str) else None
    if not m or m["family"] not in ENTRIES:
        close = [f for f in ZOO if m and m["family"] and m["family"].split("_")[0] in f]
        raise LatkitError(f"unknown zoo model {name!r}" + (f"; did you mean {', '.join(close[:4])}?" if close else
                                                           f"; zoo families: {', '.join(ZOO)}"))
    kwargs = []
    for part in filter(None, (p.strip() for p in (m["kw"] or "").split(","))):
        k, eq, v = part.partition("=")
        if not eq or not k.strip().isidentifier():
            raise LatkitError(f"zoo model {name!r}: keywords are written [key=value,...]")
        kwargs.append((k.strip(), _value(v.strip())))
    if len({k for k, _ in kwargs}) != len(kwargs):
        raise LatkitError(f"zoo model {name!r} repeats a keyword")
    res = resolution or (int(m["res"]) if m["res"] else RESOLUTION)
    e = ENTRIES[m["family"]]
    if res < e.min_resolution or res > 2048:
        raise LatkitError(f"zoo model {name!r}: resolution {res} is outside {e.min_resolution}-2048")
    return ZooModel(m["family"], tuple(sorted(kwargs)), res)


def canonical(name: str) -> str:
    return parse(name).name


def weight_seed(name: str) -> int:
    """The torch seed the weights of zoo model `name` are drawn with (from its canonical name)."""
    return int(hashlib.sha256(f"zoo\n{canonical(name)}".encode()).hexdigest()[:15], 16)


def torchvision():
    """torchvision, imported so that its model definitions work even where its C++ ops cannot load (see the
    module's doc). Returns the module; `torchvision.extension._has_ops()` says whether the ops loaded."""
    if "torchvision.models" in sys.modules:
        return sys.modules["torchvision"]
    try:
        import torchvision.models  # noqa: F401
    except ImportError as e:
        raise LatkitError("the model zoo needs torchvision; pip install 'latkit[zoo]' (scripts/setup installs "
                          "it with --no-deps, so it cannot replace the installed torch)") from e
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        import torch  # noqa: F401  (the registrations of the failed import stay valid in torch's registry)
        keep = ("torchvision.extension", "torchvision._autograd_registrations",
                "torchvision._internally_replaced_utils")
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            if k not in keep:
                del sys.modules[k]
        stub = types.ModuleType("torchvision._meta_registrations")
        stub.__doc__ = "replaced by latkit.collector.zoo: torchvision's C++ ops did not load, nothing registered"
        sys.modules["torchvision._meta_registrations"] = stub
        import torchvision.models  # noqa: F401,F811
    return sys.modules["torchvision"]


def torchvision_version() -> str:
    try:
        return metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        return "absent"


def _tuple_out(module):
    """`module`, wrapped so a dict or list of output tensors (backbones, segmentation models) comes out as a
    tuple of tensors in the dict's order: what every exporter takes."""
    import torch

    class TupleOut(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            if isinstance(out, dict):
                return tuple(out.values())
            if isinstance(out, (list, tuple)):
                return tuple(out)
            return out

    return TupleOut(module)


def _no_fastpath(module):
    """`module`, traced with torch's multi-head-attention fast path off. Exporters trace under no_grad, where
    nn.MultiheadAttention takes `aten::_native_multi_head_attention`, which the TorchScript ONNX exporter
    cannot export (latkit then falls back to dynamo); off, every format gets the same decomposed attention."""
    import torch

    class NoFastpath(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            was = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                return self.inner(x)
            finally:
                torch.backends.mha.set_fastpath_enabled(was)

    return NoFastpath(module)


def build(name: str, resolution: Optional[int] = None):
    """The torch network of zoo model `name` in eval mode, random weights seeded from its canonical name."""
    import importlib

    import torch
    zm = parse(name, resolution)
    e = zm.entry
    torchvision()
    fn: Callable = getattr(importlib.import_module(e.module), e.builder)
    kw = dict(e.kwargs)
    kw.update(zm.kwargs)
    if e.resolution_kwarg:
        kw[e.resolution_kwarg] = zm.resolution
    torch.manual_seed(weight_seed(zm.name))
    try:
        net = fn(weights=None, **kw)
    except TypeError as err:
        raise LatkitError(f"zoo model {zm.name}: {err}") from None
    if e.attr:
        net = getattr(net, e.attr)
    if e.kind != "classifier" or e.attr:
        net = _tuple_out(net)
    if e.attention:
        net = _no_fastpath(net)
    return net.eval()


def spec(name: str, fmt: str, batch_size: int = 1, resolution: Optional[int] = None):
    """The ExportSpec of zoo model `name` in `fmt`: its cache key needs no network built."""
    from .exporters import ExportSpec, exporter_versions
    zm = parse(name, resolution)
    return ExportSpec("zoo", zm.name, batch_size, zm.resolution, fmt, 0, exporter_versions(fmt),
                      (("torchvision", torchvision_version()), ("zoo_recipe", str(ZOO_RECIPE))))


def export(name: str, fmt: str = "onnx", batch_size: int = 1, resolution: Optional[int] = None,
           cache_dir: Optional[Path] = None):
    """Export zoo model `name` to `fmt` (onnx, tflite, pt2, torchscript) through latkit's exporters, cached by
    spec; returns the Artifact (space "zoo", arch the canonical name). A failed export raises Failure with
    the converter's log kept, as for any model."""
    from .exporters import DEFAULT_CACHE, check_format, export_cached, input_specs
    check_format(fmt)
    s = spec(name, fmt, batch_size, resolution)
    zm = parse(s.arch, s.resolution)
    shape = zm.input_shape(batch_size)

    def make():
        import torch
        return build(zm.name), (torch.randn(shape),)

    return export_cached(Path(cache_dir or DEFAULT_CACHE), s.key, fmt, make, "zoo", zm.name,
                         input_specs([shape], ["float32"]), spec=dataclasses.asdict(s))


def export_all(names: Sequence[str], fmt: str, resolution: Optional[int] = None,
               cache_dir: Optional[Path] = None) -> tuple:
    """({name: Artifact}, {name: why it failed}) for every name; one failure (a converter's, or a network
    that does not build) does not stop the others."""
    done, failed = {}, {}
    for n in names:
        try:
            done[n] = export(n, fmt, resolution=resolution, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001  (recorded, with its type, for the benchmark's JSON)
            text = str(e).strip()
            failed[n] = (text.splitlines()[0] if text else type(e).__name__)[:500]
    return done, failed
