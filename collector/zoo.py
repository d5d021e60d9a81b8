"""A kept model zoo: a fixed, named set of real networks (torchvision's definitions, random weights) to time.

Search spaces (collector/spaces) are cells and supernets; users time whole networks of 2-120 ms. The zoo
names >= 20 of them, from squeezenet and mobilenet to resnet50 / convnext_tiny / efficientnet / regnet, plus
a few detection and segmentation backbones, so a benchmark (scripts/bench_models.py) or a predictor can
refer to "the same networks" across runs and machines.

Names. A zoo name is `FAMILY[k=v,...]@RES`, every part but FAMILY optional:

    resnet18                     resnet18 at the zoo's resolution (224)
    resnet18@160                 the same network at 160x160
    mobilenet_v2[width_mult=0.75]@192   a width variant (a keyword of torchvision's builder) at 192
    efficientnet_b0[depth=0.75,width=1.25]@160   latkit's own width / depth multipliers (see VARIANTS)
    fasterrcnn_mobilenet_v3_large_fpn.backbone   the backbone (+FPN) of a detector, its feature maps out

`width` and `depth` are latkit's keywords, the same for every family that has them (`VARIANTS`): they
multiply the channels of every stage (rounded as the family rounds them) and the blocks per stage (at
least 1), building the family's own torchvision classes, the way EfficientNet and RegNet define their
families. 1.0 is the family itself. They give `collect --space zoo` (collector/spaces/zoo.py) thousands of
distinct real networks for a graph predictor (issue 25).

`canonical(name)` writes keywords sorted and drops `@224` and a width or depth of 1, so equal networks have one name; the weights are
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

# Families with latkit's width / depth keywords, and what each can vary.
VARIANTS = {
    "mobilenet_v2": ("width", "depth"), "mobilenet_v3_small": ("width",), "mobilenet_v3_large": ("width",),
    "mnasnet0_5": ("width",), "mnasnet1_0": ("width",),
    "shufflenet_v2_x0_5": ("width", "depth"), "shufflenet_v2_x1_0": ("width", "depth"),
    "efficientnet_b0": ("width", "depth"), "efficientnet_b1": ("width", "depth"),
    "regnet_x_400mf": ("width", "depth"), "regnet_y_400mf": ("width", "depth"),
    "regnet_y_800mf": ("width", "depth"), "regnet_x_1_6gf": ("width", "depth"),
    "resnet18": ("depth",), "resnet34": ("depth",), "resnet50": ("width", "depth"),
    "densenet121": ("width", "depth"), "convnext_tiny": ("width", "depth"),
}
MULTIPLIER = (0.25, 4.0)  # the range of width and depth

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
    kwargs = _multipliers(name, m["family"], kwargs)
    res = resolution or (int(m["res"]) if m["res"] else RESOLUTION)
    e = ENTRIES[m["family"]]
    if res < e.min_resolution or res > 2048:
        raise LatkitError(f"zoo model {name!r}: resolution {res} is outside {e.min_resolution}-2048")
    return ZooModel(m["family"], tuple(sorted(kwargs)), res)


def _multipliers(name: str, family: str, kwargs: list) -> list:
    """kwargs with width / depth checked and written as floats, a multiplier of 1 dropped (the family itself)."""
    out = []
    for k, v in kwargs:
        if k not in ("width", "depth"):
            out.append((k, v))
            continue
        if k not in VARIANTS.get(family, ()):
            has = [f for f, ks in VARIANTS.items() if k in ks]
            raise LatkitError(f"zoo model {name!r}: {family} has no {k} variants; families with {k}: {', '.join(has)}")
        if isinstance(v, bool) or not MULTIPLIER[0] <= v <= MULTIPLIER[1]:
            raise LatkitError(f"zoo model {name!r}: {k} {v!r} is outside {MULTIPLIER[0]}-{MULTIPLIER[1]}")
        if float(v) != 1.0:
            out.append((k, float(v)))
    return out


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
    width, depth = kw.pop("width", 1.0), kw.pop("depth", 1.0)
    try:
        # regnets always through _variant (same calls, same weights): it computes their widths off the meta device
        own = (width, depth) != (1.0, 1.0) or e.family.startswith("regnet")
        net = _variant(e.family, width, depth, kw) if own else fn(weights=None, **kw)
    except TypeError as err:
        raise LatkitError(f"zoo model {zm.name}: {err}") from None
    if e.attr:
        net = getattr(net, e.attr)
    if e.kind != "classifier" or e.attr:
        net = _tuple_out(net)
    if e.attention:
        net = _no_fastpath(net)
    return net.eval()


def _blocks(n: int, depth: float) -> int:
    return max(1, int(n * depth + 0.5))  # halves up: 2 x 0.75 -> 2, 2 x 1.25 -> 3


def _channels(c: int, width: float, q: int = 8) -> int:
    return max(q, int(c * width / q + 0.5) * q)


def _variant(family: str, width: float, depth: float, kw: dict):
    """The network of `family` with channels x width and blocks per stage x depth (see VARIANTS), built from
    torchvision's own classes and block configurations; `kw`: other builder keywords (num_classes, ...)."""
    import functools

    import torch
    from torch import nn
    from torchvision.models import convnext, densenet, efficientnet, mnasnet, mobilenetv2, mobilenetv3, regnet, \
        resnet, shufflenetv2
    if family == "mobilenet_v2":
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                   [6, 320, 1, 1]]  # torchvision's MobileNetV2 default (t, c, n, s)
        kw.setdefault("width_mult", width)
        return mobilenetv2.MobileNetV2(inverted_residual_setting=[[t, c, _blocks(n, depth), s] for t, c, n, s in setting],
                                       **kw)
    if family.startswith("mobilenet_v3"):
        setting, last = mobilenetv3._mobilenet_v3_conf(family, width_mult=width)
        return mobilenetv3.MobileNetV3(setting, last, **kw)
    if family.startswith("mnasnet"):
        return mnasnet.MNASNet({"mnasnet0_5": 0.5, "mnasnet1_0": 1.0}[family] * width, **kw)
    if family.startswith("shufflenet_v2"):
        mid = {"shufflenet_v2_x0_5": (48, 96, 192), "shufflenet_v2_x1_0": (116, 232, 464)}[family]
        return shufflenetv2.ShuffleNetV2([_blocks(n, depth) for n in (4, 8, 4)],
                                         [24, *(_channels(c, width, 4) for c in mid), 1024], **kw)
    if family.startswith("efficientnet_b"):
        base_w, base_d = {"efficientnet_b0": (1.0, 1.0), "efficientnet_b1": (1.0, 1.1)}[family]
        setting, last = efficientnet._efficientnet_conf(family, width_mult=base_w * width, depth_mult=base_d * depth)
        return efficientnet.EfficientNet(setting, 0.2, last_channel=last, **kw)
    if family.startswith("regnet"):
        d, w0, wa, wm, g, se = {"regnet_x_400mf": (22, 24, 24.48, 2.54, 16, None),
                                "regnet_y_400mf": (16, 48, 27.89, 2.09, 8, 0.25),
                                "regnet_y_800mf": (14, 56, 38.84, 2.4, 16, 0.25),
                                "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24, None)}[family]
        with torch.device("cpu"):  # the widths are computed with tensors: not on the meta device (flops)
            params = regnet.BlockParams.from_init_params(depth=_blocks(d, depth), w_0=_channels(w0, width),
                                                         w_a=wa * width, w_m=wm, group_width=g, se_ratio=se)
        return regnet.RegNet(params, norm_layer=functools.partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1), **kw)
    if family.startswith("resnet"):
        block, layers = {"resnet18": (resnet.BasicBlock, (2, 2, 2, 2)), "resnet34": (resnet.BasicBlock, (3, 4, 6, 3)),
                         "resnet50": (resnet.Bottleneck, (3, 4, 6, 3))}[family]
        if width != 1.0:
            kw["width_per_group"] = _channels(64, width)
        return resnet.ResNet(block, [_blocks(n, depth) for n in layers], **kw)
    if family == "densenet121":
        return densenet.DenseNet(_channels(32, width, 4), tuple(_blocks(n, depth) for n in (6, 12, 24, 16)),
                                 _channels(64, width), **kw)
    if family == "convnext_tiny":
        dims = [_channels(c, width) for c in (96, 192, 384, 768)]
        setting = [convnext.CNBlockConfig(c, nxt, _blocks(n, depth))
                   for c, nxt, n in zip(dims, dims[1:] + [None], (3, 3, 9, 3))]
        return convnext.ConvNeXt(setting, stochastic_depth_prob=kw.pop("stochastic_depth_prob", 0.1), **kw)
    raise LatkitError(f"zoo family {family} has no width / depth variants")  # VARIANTS and this list disagree


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
    from .cache import DEFAULT_CACHE
    from .exporters import check_format, export_cached, input_specs
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
