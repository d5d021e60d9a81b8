"""Any ONNX file as a typed graph of kernels, for latency models of arbitrary networks (issue 25).

    g = encode("my.onnx")                  # read with bounds; nothing in the file is run
    g.kernels[0].op, g.kernels[0].flops    # 'conv', 2 * MACs of the (fused) kernel
    g.features()                           # [n_kernels, len(FEATURES)] float32, one row per kernel
    g.edges                                # [n_edges, 2] int32 (producer kernel, consumer kernel)
    g.totals()                             # {"flops", "mac_flops", "mem_bytes", "param_bytes", "n_kernels", ...}

Reading (`load`): a regular file of at most MAX_FILE bytes; no external data (a tensor stored outside the
file is refused, never opened; with external="shapes" it is encoded from the dimensions the .onnx file
declares, the data file still never opened); at most MAX_NODES nodes, counting those of subgraphs and model-local
functions; then `onnx.shape_inference.infer_shapes` (ONNX's C++ shape functions: it runs no operator and no
code from the file) on a copy whose large initializers are replaced by typed inputs (shape inference needs
their shapes only, so a 100 MB model infers in milliseconds). A dimension left symbolic in a graph input is
the batch (`batch`, 1 by default) where it is the first one; `shapes` overrides input shapes by name.

Fusion (`fusion="ort-cpu"`, the default) mirrors what ONNX Runtime at ORT_ENABLE_ALL does on an x86 CPU
(the agent's setting), checked against ONNX Runtime's own optimized graphs in tests/test_graphs.py:
- constant folding: Constant, Identity, Dropout and every node whose inputs are all constant (shape
  arithmetic on static shapes included) disappear;
- Conv (+ BatchNormalization folded into its weights) (+ Add of a constant bias) (+ Add of a residual
  tensor, NCHWc "Sum", when the conv has no activation yet) (+ one activation: Relu, Clip, Sigmoid, Tanh,
  LeakyRelu, HardSigmoid, HardSwish or HardSigmoid*x) is one kernel, each step only where the conv's output
  has that single consumer;
- MatMul + Add(constant) is a Gemm; Gemm (+ Relu, Sigmoid, Tanh, LeakyRelu, Clip, HardSigmoid) one kernel;
- x * Sigmoid(x) is one elementwise kernel (ONNX Runtime's QuickGelu), activation "swish".
`fusion="none"` keeps one kernel per remaining ONNX node.

Per kernel: `op` (a bucket of OPS: conv, dwconv, gconv, ..., other), its activation (ACTS), the ONNX ops it
fused, kernel / stride / groups / dilation, input and output shapes (activations only; parameters are
counted in param_bytes), `flops` (2 x MACs for conv / gemm / matmul, as torch's FlopCounterMode and the
spaces' analytic counts; one per output element for elementwise ops; kernel area per output for pools),
`mac_flops` (the conv / gemm / matmul part only), `mem_bytes` (activation bytes read + written + parameter
bytes) and `param_bytes`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from latkit.collector import validate
from latkit.collector.errors import LatkitError, need

MAX_FILE = 1 << 30     # bytes of an .onnx file (protobuf's own limit is 2 GB)
MAX_NODES = 50_000     # nodes, subgraphs and functions included
SMALL_INIT = 1024      # initializers up to this many elements keep their values for shape inference

OPS = ("conv", "dwconv", "gconv", "convtranspose", "gemm", "matmul", "pool", "globalpool", "binary", "unary",
       "norm", "softmax", "concat", "slice", "reshape", "transpose", "resize", "pad", "reduce", "other")
ACTS = ("none", "relu", "clip", "sigmoid", "tanh", "leakyrelu", "hardsigmoid", "hardswish", "swish", "other")
_BUCKET = {
    "ConvTranspose": "convtranspose", "Gemm": "gemm", "MatMul": "matmul", "MaxPool": "pool",
    "AveragePool": "pool", "LpPool": "pool", "GlobalAveragePool": "globalpool", "GlobalMaxPool": "globalpool",
    "BatchNormalization": "norm", "LayerNormalization": "norm", "InstanceNormalization": "norm",
    "GroupNormalization": "norm", "LRN": "norm", "Softmax": "softmax", "LogSoftmax": "softmax",
    "Concat": "concat", "Split": "slice", "Slice": "slice", "Gather": "slice", "Reshape": "reshape",
    "Flatten": "reshape", "Squeeze": "reshape", "Unsqueeze": "reshape", "Expand": "reshape",
    "Transpose": "transpose", "DepthToSpace": "transpose", "SpaceToDepth": "transpose", "Resize": "resize",
    "Upsample": "resize", "Pad": "pad", "ReduceMean": "reduce", "ReduceMax": "reduce", "ReduceSum": "reduce",
    "ReduceMin": "reduce", "ReduceL2": "reduce", "ArgMax": "reduce", "TopK": "reduce",
}
for _op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Greater", "Less"):
    _BUCKET[_op] = "binary"
for _op in ("Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "Gelu",
            "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Reciprocal", "Softplus", "Mish", "PRelu", "Cast", "Not",
            "Floor", "Ceil", "Round", "Sign", "Sin", "Cos"):
    _BUCKET[_op] = "unary"
_CONV_ACTS = {"Relu": "relu", "Clip": "clip", "Sigmoid": "sigmoid", "Tanh": "tanh", "LeakyRelu": "leakyrelu",
              "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish"}
_GEMM_ACTS = {k: v for k, v in _CONV_ACTS.items() if k != "HardSwish"}
_DROP = {"Constant", "Identity", "Dropout", "ConstantOfShape", "Shape", "Size"}  # shape ops only if foldable
# Per-element cost of ops beyond one flop (a rough analytic count; the models learn the rest).
_ELEM_FLOPS = {"Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "InstanceNormalization": 8,
               "GroupNormalization": 8, "BatchNormalization": 2, "Gelu": 8, "Erf": 8, "Exp": 4, "Sigmoid": 4,
               "Tanh": 4, "HardSwish": 3, "HardSigmoid": 2, "Resize": 4, "Mish": 8, "Softplus": 4}

# The numeric columns of `Graph.features()`; op and activation one-hots first.
FEATURES = tuple(f"op={o}" for o in OPS) + tuple(f"act={a}" for a in ACTS) + (
    "bn", "bias", "residual", "kernel_h", "kernel_w", "stride", "dilation", "log_groups", "log_cin", "log_cout",
    "log_hin", "log_win", "log_hout", "log_wout", "log_flops", "log_mac_flops", "log_mem_bytes",
    "log_param_bytes", "log_in_elems", "log_out_elems", "n_fused", "shapes_known")


@dataclass
class Kernel:
    """One kernel as the runtime runs it: an ONNX node with what it fused."""
    op: str                       # bucket in OPS
    onnx_ops: list                # ONNX op types fused into it, the main one first
    name: str = ""
    act: str = "none"             # fused activation, in ACTS
    bn: bool = False              # a BatchNormalization folded into its weights
    bias: bool = False
    residual: bool = False        # a residual Add fused (ONNX Runtime's NCHWc Sum)
    kernel: tuple = ()            # (kh, kw) of conv / pool
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    in_shapes: list = field(default_factory=list)   # activation inputs (parameters excluded)
    out_shape: tuple = ()
    flops: float = 0.0
    mac_flops: float = 0.0
    mem_bytes: float = 0.0
    param_bytes: float = 0.0
    shapes_known: bool = True


@dataclass
class Graph:
    kernels: list
    edges: np.ndarray             # [E, 2] int32: (producer kernel, consumer kernel)
    inputs: dict                  # graph input name -> shape used
    n_onnx_nodes: int = 0
    opset: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.kernels)

    def totals(self) -> dict:
        ks = self.kernels
        return {"flops": float(sum(k.flops for k in ks)), "mac_flops": float(sum(k.mac_flops for k in ks)),
                "mem_bytes": float(sum(k.mem_bytes for k in ks)),
                "param_bytes": float(sum(k.param_bytes for k in ks)), "n_kernels": len(ks),
                "n_edges": int(len(self.edges)), "n_onnx_nodes": self.n_onnx_nodes}

    def features(self) -> np.ndarray:
        """[n_kernels, len(FEATURES)] float32 (logs are log1p)."""
        return kernel_features(self.kernels)

    def op_counts(self) -> dict:
        out: dict = {}
        for k in self.kernels:
            out[k.op] = out.get(k.op, 0) + 1
        return out


def kernel_features(kernels) -> np.ndarray:
    n_ops, n_acts = len(OPS), len(ACTS)
    op_i, act_i = {o: i for i, o in enumerate(OPS)}, {a: i for i, a in enumerate(ACTS)}
    lg = math.log1p
    rows = []  # plain Python per kernel, one array at the end (a numpy row assignment per kernel costs more)
    for k in kernels:
        src = k.in_shapes[0] if k.in_shapes else ()
        cin, hin, win = _chw(src)
        cout, hout, wout = _chw(k.out_shape)
        kh, kw = (k.kernel + (1, 1))[:2] if k.kernel else (0, 0)
        rows.append((
            op_i[k.op], n_ops + act_i[k.act],
            k.bn, k.bias, k.residual, kh, kw, k.stride, k.dilation, math.log(max(k.groups, 1)), lg(cin), lg(cout),
            lg(hin), lg(win), lg(hout), lg(wout), lg(k.flops), lg(k.mac_flops), lg(k.mem_bytes),
            lg(k.param_bytes), lg(sum(_numel(s) for s in k.in_shapes)), lg(_numel(k.out_shape)),
            len(k.onnx_ops), k.shapes_known))
    out = np.zeros((len(kernels), len(FEATURES)), np.float32)
    if rows:
        values = np.array(rows, np.float64)
        out[:, n_ops + n_acts:] = values[:, 2:]
        out[np.arange(len(rows))[:, None], values[:, :2].astype(np.intp)] = 1
    return out


def _chw(shape) -> tuple:
    """(channels, height, width) of an NCHW-like shape; (features, 1, 1) of 2-D; zeros when unknown."""
    s = [max(int(d), 0) for d in shape]
    if len(s) >= 4:
        return s[1], s[2], math.prod(s[3:])
    if len(s) == 3:
        return s[1], s[2], 1
    if len(s) == 2:
        return s[1], 1, 1
    return (s[0] if s else 0), 1, 1


def _numel(shape) -> int:
    return max(math.prod(shape), 0) if all(d >= 0 for d in shape) else 0


# -- reading ------------------------------------------------------------------------------------------
_A_TENSOR, _A_GRAPH, _A_GRAPHS = 4, 5, 10  # onnx.AttributeProto types that hold a tensor or graphs
_A_NESTED = (_A_TENSOR, _A_GRAPH, _A_GRAPHS)


def load(path, max_bytes: int = MAX_FILE, max_nodes: int = MAX_NODES, external: str = "refuse"):
    """The ModelProto of an .onnx file, with the bounds of the module docstring."""
    onnx = need("onnx", "export", "reading ONNX graphs")
    with os.fdopen(validate.open_regular(path, "ONNX file"), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise LatkitError(f"{path} is {size} bytes, more than the {max_bytes} latkit reads as an ONNX graph")
        data = f.read(size + 1)  # not max_bytes + 1: a buffer of that size costs milliseconds
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise LatkitError(f"{path} is not an ONNX model ({str(e)[:100] or type(e).__name__}); give an .onnx file") \
            from None
    check(model, str(path), max_nodes, external)
    return model


def check(model, what: str = "the model", max_nodes: int = MAX_NODES, external: str = "refuse") -> None:
    """Refuse graphs over `max_nodes` nodes (subgraphs and functions counted) and, with external="refuse",
    tensors kept in external data; external="shapes" encodes such a model from the shapes its .onnx file
    declares (the data file is never opened: encoding needs no weight values)."""
    if external not in ("refuse", "shapes"):
        raise LatkitError(f"unknown external-data mode {external!r}; choose refuse or shapes")
    onnx = need("onnx", "export", "reading ONNX graphs")
    if not model.HasField("graph"):
        raise LatkitError(f"{what} holds no graph; give an ONNX model file")
    count, stack = 0, [model.graph] + [f for f in model.functions]
    while stack:
        g = stack.pop()
        count += len(g.node)
        if count > max_nodes:
            raise LatkitError(f"{what} has more than {max_nodes} nodes, more than latkit encodes")
        for init in getattr(g, "initializer", ()):
            if (init.data_location == onnx.TensorProto.EXTERNAL or init.external_data) and external == "refuse":
                raise LatkitError(f"{what} keeps tensor {init.name[:60]!r} in external data (torch's dynamo "
                                  "exporter does by default), which latkit does not open; encode it from its "
                                  "declared shapes (external='shapes'; the data file is never read) or save the "
                                  "model with its weights inside (onnx.save(..., save_as_external_data=False))")
        for a in (a for node in g.node for a in node.attribute if a.type in _A_NESTED):
            if a.type == _A_GRAPH:
                stack.append(a.g)
            elif a.type == _A_GRAPHS:
                stack.extend(a.graphs)
            elif a.t.data_location == onnx.TensorProto.EXTERNAL and external == "refuse":
                raise LatkitError(f"{what} keeps a constant in external data, which latkit does not open")


_ITEMSIZE: dict = {}


def _itemsize(elem_type: int) -> int:
    size = _ITEMSIZE.get(elem_type)
    if size is None:
        import onnx
        try:
            size = int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
        except (KeyError, TypeError, ValueError):
            size = 4
        _ITEMSIZE[elem_type] = size
    return size


def _infer(model, batch: int, shapes: Optional[dict]):
    """Shapes and element types of every tensor: {name: (shape tuple (-1 unknown), elem_type)}, plus the
    constant tensor names {name: None} and the input shapes used."""
    onnx = need("onnx", "export", "reading ONNX graphs")
    g = model.graph
    consts: dict = {}
    info: dict = {}
    kept = []
    for init in g.initializer:
        dims = tuple(int(d) for d in init.dims)
        info[init.name] = (dims, init.data_type)
        consts[init.name] = None  # constant; its values are never needed here
        if _numel(dims) <= SMALL_INIT and init.data_location != onnx.TensorProto.EXTERNAL:
            kept.append(init)
    light = onnx.ModelProto()
    light.ir_version, light.producer_name = model.ir_version, model.producer_name
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    lg = light.graph
    lg.node.extend(g.node)
    lg.initializer.extend(kept)
    lg.output.extend(g.output)
    names_init = {i.name for i in g.initializer}
    used = {}
    for inp in g.input:
        if inp.name in names_init:
            continue
        t = inp.type.tensor_type
        dims = []
        for i, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(batch if i == 0 else -1)
        if shapes and inp.name in shapes:
            dims = [int(x) for x in shapes[inp.name]]
        used[inp.name] = tuple(dims)
        lg.input.append(onnx.helper.make_tensor_value_info(inp.name, t.elem_type, dims if t.HasField("shape")
                                                           else None))
        info[inp.name] = (tuple(dims), t.elem_type)
    kept_names = {i.name for i in kept}
    for init in g.initializer:
        if init.name not in kept_names:
            lg.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:
        raise LatkitError(f"shape inference failed on this graph ({str(e).splitlines()[0][:120] if str(e) else e}); "
                          "give a model ONNX's shape inference can read") from None
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = tuple([v if (v := d.dim_value) or d.HasField("dim_value") else -1 for d in t.shape.dim])
        info.setdefault(vi.name, (dims, t.elem_type))
    # name -> (shape, bytes, known)
    meta = {}
    for name, (dims, et) in info.items():
        known = all(d > 0 for d in dims)
        meta[name] = (dims, float(math.prod(dims) * _itemsize(et)) if known else 0.0, known)
    return meta, consts, used


_A_FLOAT, _A_INT, _A_STRING, _A_INTS = 1, 2, 3, 7  # onnx.AttributeProto types
_ATTR_OPS = {"Conv", "ConvTranspose", "Gemm", "MaxPool", "AveragePool", "LpPool"}  # whose attributes _kernel reads


def _attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        t = a.type
        if t == _A_INT:
            out[a.name] = int(a.i)
        elif t == _A_INTS:
            out[a.name] = [int(x) for x in a.ints]
        elif t == _A_FLOAT:
            out[a.name] = float(a.f)
        elif t == _A_STRING:
            out[a.name] = a.s.decode(errors="replace")
    return out


@dataclass
class _Node:
    """An ONNX node as plain Python (protobuf field access is slow in loops)."""
    op_type: str
    domain: str
    name: str
    input: list
    output: list
    attrs: dict


# -- encoding -----------------------------------------------------------------------------------------
def encode(model, batch: int = 1, shapes: Optional[dict] = None, fusion: str = "ort-cpu",
           max_bytes: int = MAX_FILE, max_nodes: int = MAX_NODES, external: str = "refuse") -> Graph:
    """The kernel graph of `model`: a path to an .onnx file or an onnx ModelProto. `external`: refuse
    (default) or encode from declared shapes a model whose tensors are kept in external data."""
    if fusion not in ("ort-cpu", "none"):
        raise LatkitError(f"unknown fusion {fusion!r}; choose ort-cpu or none")
    source = ""
    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        model = load(model, max_bytes, max_nodes, external)
    else:
        check(model, "the model", max_nodes, external)
    info, consts, used = _infer(model, batch, shapes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    g = model.graph
    plain = [_Node(n.op_type, n.domain, n.name, list(n.input), list(n.output),
                   _attrs(n) if n.op_type in _ATTR_OPS else {}) for n in g.node]
    nodes, const = _live_nodes(plain, info, consts)
    kernels = _fuse(nodes, info, const, fusion)
    # edges: kernel producing a tensor -> kernels consuming it
    producer = {}
    for ki, (k, outs, ins) in enumerate(kernels):
        for t in outs:
            producer[t] = ki
    edges = sorted({(producer[t], ki) for ki, (k, outs, ins) in enumerate(kernels) for t in ins
                    if t in producer and producer[t] != ki})
    return Graph([k for k, _, _ in kernels], np.array(edges, np.int32).reshape(-1, 2), used, len(g.node), opset,
                 source)


def _live_nodes(all_nodes, info, consts) -> list:
    """The nodes a runtime runs: topologically ordered, constants folded, no-ops dropped (their output
    renamed to their input)."""
    produced_by = {}
    for i, n in enumerate(all_nodes):
        for o in n.output:
            produced_by[o] = i
    # ONNX requires topological order; a file that breaks it is sorted (Kahn), a cycle refused
    if any(produced_by.get(x, -1) >= i for i, n in enumerate(all_nodes) for x in n.input):
        order = _kahn_sorted(all_nodes, produced_by)
        if len(order) != len(all_nodes):
            raise LatkitError("the graph has a cycle; give a valid ONNX model")
    else:
        order = range(len(all_nodes))
    alias: dict = {}
    live = []
    const = set(consts)
    for i in order:
        n = all_nodes[i]
        ins = [alias.get(x, x) for x in n.input]
        if n.op_type in ("Identity", "Dropout") and ins:
            alias[n.output[0]] = ins[0]
            continue
        static_shape = n.op_type in ("Shape", "Size") and ins and all(d > 0 for d in _shape(info, ins[0]))
        if n.op_type == "Constant" or static_shape or (ins and all((x == "" or x in const) for x in ins)):
            const.update(n.output)
            continue
        live.append((n, ins, list(n.output)))
    return live, const


def _kahn_sorted(all_nodes, produced_by) -> list:
    consumers: dict = {}
    for i, n in enumerate(all_nodes):
        for x in n.input:
            if x in produced_by:
                consumers.setdefault(produced_by[x], []).append(i)
    indeg = [sum(1 for x in n.input if x in produced_by) for n in all_nodes]
    ready, order = sorted(i for i, d in enumerate(indeg) if d == 0), []
    import heapq
    heapq.heapify(ready)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in consumers.get(i, ()):
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready, j)
    return order


def _as_swish(k, info, out: str) -> str:
    """Kernel `k` (a Sigmoid) with the Mul of x * Sigmoid(x) absorbed: one swish kernel writing `out`."""
    k.onnx_ops.append("Mul")
    k.op, k.act = "unary", "swish"
    k.flops += _elem_flops("Mul", info, out)
    return out


def _fused_output(k, info, first_out: str, last_out: str) -> None:
    """A fused kernel writes its last node's output, not its first's."""
    k.out_shape = _shape(info, last_out)
    k.mem_bytes = k.mem_bytes - _bytes(info, first_out) + _bytes(info, last_out)
    k.shapes_known = k.shapes_known and all(d > 0 for d in k.out_shape)


def _fuse(nodes, info, consts, fusion) -> tuple:
    """[(Kernel, output tensor names, input tensor names)] in order."""
    consumers: dict = {}
    for idx, (n, ins, outs) in enumerate(nodes):
        for x in ins:
            consumers.setdefault(x, []).append(idx)
    taken = [False] * len(nodes)
    out = []

    def only_consumer(tensor):
        c = consumers.get(tensor, [])
        return c[0] if len(c) == 1 and not taken[c[0]] else None

    def is_const(x):
        return x in consts

    for idx, (n, ins, outs) in enumerate(nodes):
        if taken[idx]:
            continue
        taken[idx] = True
        group = [(n, ins, outs)]
        k = _kernel(n, ins, outs, info, consts)
        cur = outs[0] if outs else None
        if fusion == "ort-cpu" and n.op_type in ("Conv", "Gemm", "MatMul") and cur is not None:
            acts = _CONV_ACTS if n.op_type == "Conv" else _GEMM_ACTS
            while True:
                both = consumers.get(cur, [])
                if n.op_type == "Conv" and k.act == "none" and len(both) == 2:  # x * HardSigmoid(x): HardSwish
                    hs = next((c for c in both if nodes[c][0].op_type == "HardSigmoid" and not taken[c]), None)
                    mul = None if hs is None else _mul_of(nodes, consumers, cur, hs, nodes[hs][2])
                    if mul is not None:
                        for c in (hs, mul):
                            taken[c] = True
                            group.append(nodes[c])
                        k.onnx_ops += ["HardSigmoid", "Mul"]
                        k.act = "hardswish"
                        k.flops += _elem_flops("HardSwish", info, cur)
                        cur = nodes[mul][2][0]
                        continue
                j = only_consumer(cur)
                if j is None:
                    break
                m, mins, mouts = nodes[j]
                if n.op_type == "Conv" and m.op_type == "BatchNormalization" and not (k.bn or k.residual or
                                                                                       k.act != "none"):
                    k.bn = True
                elif m.op_type == "Add" and k.act == "none" and not k.residual and any(
                        is_const(x) for x in mins) and n.op_type in ("Conv", "MatMul", "Gemm"):
                    k.bias = True
                    if n.op_type == "MatMul":
                        k.op, k.onnx_ops[0] = "gemm", "Gemm"
                elif (n.op_type == "Conv" and m.op_type == "Add" and k.act == "none" and not k.residual
                      and len(mins) == 2 and all(not is_const(x) for x in mins)
                      and _shape(info, mins[0]) == _shape(info, mins[1])):
                    k.residual = True
                    other = mins[1] if mins[0] == cur else mins[0]
                    k.in_shapes.append(_shape(info, other))
                    k.mem_bytes += _bytes(info, other)
                    ins = ins + [other]
                elif m.op_type in acts and k.act == "none":
                    k.act = acts[m.op_type]
                else:
                    break
                taken[j] = True
                group.append((m, mins, mouts))
                k.onnx_ops.append(m.op_type)
                k.flops += _elem_flops(m.op_type, info, mouts[0]) if m.op_type != "BatchNormalization" else 0
                cur = mouts[0]
        elif fusion == "ort-cpu" and n.op_type == "Sigmoid" and ins:
            mul = _mul_of(nodes, consumers, ins[0], idx, outs)
            if mul is not None:  # x * Sigmoid(x): QuickGelu
                taken[mul] = True
                group.append(nodes[mul])
                cur = _as_swish(k, info, nodes[mul][2][0])
        if cur is not None and len(group) > 1:
            _fused_output(k, info, outs[0], cur)
        final_outs = [cur] if len(group) > 1 else outs
        out.append((k, final_outs, ins))
    return out


def _mul_of(nodes, consumers, x, gate_idx, gate_outs):
    """The index of a Mul(x, gate) consuming the gate's output and x, the gate having that Mul alone."""
    c = consumers.get(gate_outs[0], []) if gate_outs else []
    if len(c) != 1:
        return None
    m, mins, _ = nodes[c[0]]
    if m.op_type == "Mul" and sorted(mins) == sorted([x, gate_outs[0]]):
        return c[0]
    return None


_UNKNOWN = ((-1,), 0.0, False)


def _shape(info, name) -> tuple:
    return info.get(name, _UNKNOWN)[0]


def _bytes(info, name) -> float:
    return info.get(name, _UNKNOWN)[1]


def _elem_flops(op, info, out) -> float:
    shape, _, known = info.get(out, _UNKNOWN)
    return float(_ELEM_FLOPS.get(op, 1) * math.prod(shape)) if known else 0.0


def _kernel(n, ins, outs, info, consts) -> Kernel:
    a = n.attrs
    op = n.op_type
    acts = [x for x in ins if x and x not in consts]
    params = [x for x in ins if x and x in consts]
    k = Kernel(op=_BUCKET.get(op, "other"), onnx_ops=[op], name=n.name)
    if n.domain not in ("", "ai.onnx"):
        k.op = "other"
    k.in_shapes = [_shape(info, x) for x in acts]
    k.out_shape = _shape(info, outs[0]) if outs else ()
    k.param_bytes = sum(_bytes(info, x) for x in params)
    k.mem_bytes = sum(_bytes(info, x) for x in acts) + sum(_bytes(info, x) for x in outs) + k.param_bytes
    k.shapes_known = all(info.get(x, _UNKNOWN)[2] for x in acts) and (not outs or info.get(outs[0], _UNKNOWN)[2])
    out_n = _numel(k.out_shape) if k.shapes_known else 0
    if op in ("Conv", "ConvTranspose"):
        w = _shape(info, ins[1]) if len(ins) > 1 else ()
        k.groups = int(a.get("group", 1))
        k.kernel = tuple(int(x) for x in (a.get("kernel_shape") or w[2:]))
        k.stride = int(max(a.get("strides", [1]) or [1]))
        k.dilation = int(max(a.get("dilations", [1]) or [1]))
        k.bias = len(ins) > 2 and bool(ins[2])
        cin = _shape(info, ins[0])[1] if len(_shape(info, ins[0])) > 1 else 0
        if op == "Conv":
            k.op = "conv" if k.groups == 1 else ("dwconv" if k.groups == cin and w and w[1] == 1 else "gconv")
        if len(w) >= 3 and k.shapes_known:
            per_out = _numel(w[1:])  # cin/groups * kernel area
            if op == "Conv":
                k.mac_flops = 2.0 * out_n * per_out
            else:  # transposed: every input element meets cout/groups x kernel area weights
                k.mac_flops = 2.0 * _numel(_shape(info, ins[0])) * w[1] * _numel(w[2:])
        k.flops = k.mac_flops
    elif op in ("Gemm", "MatMul"):
        sa, sb = _shape(info, ins[0]), _shape(info, ins[1]) if len(ins) > 1 else ()
        if len(sa) >= 1 and len(sb) >= 1 and k.shapes_known and all(d > 0 for d in sa + sb):
            kdim = sa[-1] if not (op == "Gemm" and a.get("transA")) else sa[0]
            k.mac_flops = 2.0 * out_n * kdim
        k.flops = k.mac_flops
        k.bias = op == "Gemm" and len(ins) > 2 and bool(ins[2])
        if op == "MatMul" and not params:
            k.op = "matmul"
        elif op == "MatMul":
            k.op = "gemm"
    elif op in ("MaxPool", "AveragePool", "LpPool"):
        k.kernel = tuple(int(x) for x in a.get("kernel_shape", [1]))
        k.stride = int(max(a.get("strides", [1]) or [1]))
        k.dilation = int(max(a.get("dilations", [1]) or [1]))
        k.flops = float(out_n * _numel(k.kernel))
    elif op in ("GlobalAveragePool", "GlobalMaxPool") or op.startswith("Reduce"):
        k.flops = float(sum(_numel(s) for s in k.in_shapes)) if k.shapes_known else 0.0
        if op.startswith("Reduce") and len(k.in_shapes) == 1 and len(k.in_shapes[0]) == 4 and len(k.out_shape) in (
                2, 4) and _numel(k.out_shape) == k.in_shapes[0][0] * k.in_shapes[0][1]:
            k.op = "globalpool"  # mean over H, W: torch's x.mean((2, 3)), ONNX Runtime's own kernel all the same
    elif k.op in ("reshape", "slice", "concat", "transpose", "pad"):
        k.flops = 0.0
    else:
        k.flops = float(_ELEM_FLOPS.get(op, 1) * out_n)
    return k


def encode_many(paths, **kw) -> list:
    """encode() of each path, in order."""
    return [encode(p, **kw) for p in paths]
