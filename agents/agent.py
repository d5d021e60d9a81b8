#!/usr/bin/env python3
"""latkit device agent: times models on the machine it runs on.

This one file is copied to every device, so it uses only the standard library plus
whichever runtime it times (numpy comes with all of them); psutil is used when present.
It must run on Python >= 3.8 and never imports latkit.

Protocol: newline-delimited JSON on stdin/stdout, one request per line, one reply per line.

    -> {"id": 7, "op": "measure", "model": "<sha256>.onnx", "runtime": "onnxruntime", "settings": {...},
        "inputs": [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}]}   # inputs: TorchScript only
    <- {"id": 7, "ok": true, "result": {"samples_ms": [...], "runtime_version": "...", ...}}
    <- {"id": 7, "ok": false, "error": {"kind": "unsupported_op", "message": "..."}}

Ops: ping, probe, has, measure, shutdown. Models arrive out of band into <workdir>/models/.
Runtime libraries sometimes print to file descriptor 1, so replies go to a private
duplicate of stdout and fd 1 is pointed at stderr.
"""
import argparse
import gc
import glob
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import traceback

AGENT_VERSION = "0.1.0"

# The timing protocol's defaults; the host sends its own Settings, these apply to missing keys.
DEFAULT_SETTINGS = {
    "threads": 1,          # intra-op threads of the runtime
    "cores": None,         # list of CPU ids to pin the agent to (os.sched_setaffinity), None = no pinning
    "accelerator": "cpu",  # "cpu" or "cuda"
    "batch_size": None,    # fills a dynamic first dimension; None = the model's declared size (1 if dynamic)
    "warmup_min_count": 10,
    "warmup_min_s": 0.2,
    "repeats_min_count": 20,
    "repeats_min_s": 1.0,
    "repeats_max_count": 10000,
    "repeats_max_s": 10.0,
    "cv_target": 0.01,     # keep repeating (up to the caps) while the robust CV is above this
    "seed": 0,             # seed of the generated inputs
    "dtype": "float32",    # torch on cuda: float32, float16 or bfloat16 weights and inputs
    "cuda_graphs": False,  # torch on cuda: capture the forward once as a CUDA graph and replay it
    "include_copies": False,  # torch on cuda: time host->device input and device->host output copies too
}

RUNTIMES = ("onnxruntime", "tflite", "torch")


class AgentError(Exception):
    """A failure the host should record as a value: kind is a short machine-readable tag."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


# ---------------------------------------------------------------------------------------------
# Probe and telemetry


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _try_import(name):
    try:
        return __import__(name, fromlist=["_"])
    except Exception:  # a broken install (e.g. numpy ABI mismatch) is as good as absent
        return None


def _cpu_model():
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _mem_total_mb():
    psutil = _try_import("psutil")
    if psutil is not None:
        return round(psutil.virtual_memory().total / 2 ** 20)
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024)
    return None


def _gpus():
    """NVIDIA GPUs via nvidia-smi; an empty list where there is none."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory_mb": int(float(parts[2]))})
    return gpus


def runtime_versions():
    """Each runtime that imports here, with its version and what it can run on."""
    found = {}
    ort = _try_import("onnxruntime")
    if ort is not None:
        found["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    module, interp = _tflite_interpreter()
    if interp is not None:
        found["tflite"] = {"version": _tflite_version(module), "module": module}
    torch = _try_import("torch")
    if torch is not None:
        found["torch"] = {"version": torch.__version__.split("+")[0], "cuda": bool(torch.cuda.is_available()),
                          "cuda_version": torch.version.cuda}
    return found


def probe():
    uname = platform.uname()
    cpu_freq = _cpu_freq_mhz()
    return {
        "agent_version": AGENT_VERSION,
        "hostname": socket.gethostname(),
        "os": uname.system,
        "os_release": _os_release(),
        "kernel": uname.release,
        "machine": uname.machine,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_freq_mhz": cpu_freq,
        "cpu_max_freq_mhz": _khz_to_mhz(_read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")),
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "memory_mb": _mem_total_mb(),
        "gpus": _gpus(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "runtimes": runtime_versions(),
    }


def _os_release():
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.platform()


def _khz_to_mhz(text):
    try:
        return round(int(text) / 1000.0, 1)
    except (TypeError, ValueError):
        return None


def _cpu_freq_mhz():
    """Mean current frequency over the CPUs we may run on: psutil first, /sys as fallback."""
    psutil = _try_import("psutil")
    if psutil is not None:
        try:
            freq = psutil.cpu_freq()
            if freq is not None and freq.current:
                return round(freq.current, 1)
        except (OSError, NotImplementedError):
            pass
    values = [_khz_to_mhz(_read(p)) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")]
    values = [v for v in values if v]
    if values:
        return round(sum(values) / len(values), 1)
    mhz = [float(line.split(":")[1]) for line in (_read("/proc/cpuinfo") or "").splitlines()
           if line.startswith("cpu MHz")]
    return round(sum(mhz) / len(mhz), 1) if mhz else None


def _temp_c():
    """Hottest readable sensor: psutil first, /sys/class/thermal as fallback; None where unreadable."""
    psutil = _try_import("psutil")
    if psutil is not None and hasattr(psutil, "sensors_temperatures"):
        try:
            temps = [t.current for ts in psutil.sensors_temperatures().values() for t in ts if t.current]
            if temps:
                return round(max(temps), 1)
        except (OSError, NotImplementedError):
            pass
    temps = []
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        try:
            temps.append(int(_read(path)) / 1000.0)
        except (TypeError, ValueError):
            pass
    return round(max(temps), 1) if temps else None


def telemetry(gpu=False):
    try:
        load1 = round(os.getloadavg()[0], 2)
    except OSError:
        load1 = None
    t = {"freq_mhz": _cpu_freq_mhz(), "temp_c": _temp_c(), "load1": load1}
    if gpu:
        t.update(gpu_telemetry())
    return t


_GPU_FIELDS = ("gpu_sm_mhz", "gpu_mem_mhz", "gpu_temp_c", "gpu_power_w", "gpu_clocks_locked")


def gpu_telemetry(index=0):
    """Clocks, temperature, power and whether application clocks are pinned, of GPU `index`: NVML
    (nvidia-ml-py) when it imports, nvidia-smi otherwise; all None where there is no NVIDIA GPU."""
    nvml = _try_import("pynvml")
    if nvml is not None:
        try:
            nvml.nvmlInit()
            h = nvml.nvmlDeviceGetHandleByIndex(index)
            sm = nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)
            app = nvml.nvmlDeviceGetApplicationsClock(h, nvml.NVML_CLOCK_SM)
            default = nvml.nvmlDeviceGetDefaultApplicationsClock(h, nvml.NVML_CLOCK_SM)
            return {"gpu_sm_mhz": sm, "gpu_mem_mhz": nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM),
                    "gpu_temp_c": nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
                    "gpu_power_w": nvml.nvmlDeviceGetPowerUsage(h) / 1000.0, "gpu_clocks_locked": app != default}
        except Exception:
            pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-i", str(index), "--query-gpu=clocks.sm,clocks.mem,temperature.gpu,"
                                  "power.draw,clocks.applications.graphics,clocks.default_applications.graphics",
                                  "--format=csv,noheader,nounits"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 universal_newlines=True, timeout=20).stdout.strip().split(",")
            vals = [_number(v) for v in out]
            if len(vals) == 6:
                return {"gpu_sm_mhz": vals[0], "gpu_mem_mhz": vals[1], "gpu_temp_c": vals[2], "gpu_power_w": vals[3],
                        "gpu_clocks_locked": None if None in vals[4:] else vals[4] != vals[5]}
        except (OSError, subprocess.SubprocessError):
            pass
    return dict.fromkeys(_GPU_FIELDS)


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Runners: load a model, generate inputs from its declared shapes, return a zero-argument callable


def _np():
    np = _try_import("numpy")
    if np is None:
        raise AgentError("runtime_missing", "numpy is not installed on this device; install it in the agent's Python")
    return np


def _resolve_shape(shape, batch_size, what):
    """Turn a declared shape (ints, None or names for dynamic dims) into concrete ints."""
    dims = []
    for i, d in enumerate(shape):
        if isinstance(d, int) and d >= 0:
            dims.append(d)
        elif i == 0:
            dims.append(batch_size or 1)
        else:
            raise AgentError("bad_model", "%s has dynamic dimension %d (%r); export the model with a static shape"
                             % (what, i, d))
    if batch_size and dims and dims[0] != batch_size and isinstance(shape[0], int) and shape[0] >= 0:
        raise AgentError("bad_request", "%s has a static batch of %d but batch_size=%d was asked; "
                         "re-export the model at that batch size" % (what, dims[0], batch_size))
    return dims


def _make_input(np, rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "b":
        return np.zeros(shape, dtype=dtype)
    raise AgentError("bad_model", "input dtype %s is not supported; use float, int or bool inputs" % dtype)


def _input_desc(name, array):
    return {"name": name, "shape": list(array.shape), "dtype": str(array.dtype)}


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
               "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def load_onnxruntime(path, s, inputs):
    ort = _try_import("onnxruntime")
    if ort is None:
        raise AgentError("runtime_missing", "onnxruntime is not installed on this device; pip install onnxruntime")
    np = _np()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = s["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if s["accelerator"] == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise AgentError("runtime_missing", "onnxruntime here has no CUDAExecutionProvider; "
                             "install onnxruntime-gpu or use accelerator cpu")
        providers = ["CUDAExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(path, sess_options=opts, providers=providers)
    except Exception as e:
        text = str(e)
        if any(m in text for m in ("NOT_IMPLEMENTED", "Could not find an implementation", "is not a registered")):
            raise AgentError("unsupported_op", "onnxruntime %s cannot run this model: %s" % (ort.__version__, _first_line(text)))
        raise AgentError("corrupt_model", "onnxruntime could not load the model: %s" % _first_line(text))
    rng = np.random.default_rng(s["seed"])
    feeds = {}
    for inp in sess.get_inputs():
        if inp.type not in _ORT_DTYPES:
            raise AgentError("bad_model", "input %r has type %s, which latkit cannot generate" % (inp.name, inp.type))
        shape = _resolve_shape(inp.shape, s["batch_size"], "input %r" % inp.name)
        feeds[inp.name] = _make_input(np, rng, shape, _ORT_DTYPES[inp.type])
    # session.run returns host arrays, so with the CUDA EP the wall clock includes the output copy
    return wall_timer(lambda: sess.run(None, feeds)), ort.__version__, [_input_desc(k, v) for k, v in feeds.items()]


def _tflite_interpreter():
    """(module name, Interpreter class) of the first TFLite runtime that imports, else (None, None)."""
    for module, attr in (("ai_edge_litert.interpreter", "Interpreter"),
                         ("tflite_runtime.interpreter", "Interpreter"),
                         ("tensorflow.lite", "Interpreter")):
        mod = _try_import(module)
        if mod is not None and hasattr(mod, attr):
            return module.split(".")[0], getattr(mod, attr)
    return None, None


def _tflite_version(module):
    mod = _try_import(module)
    version = getattr(mod, "__version__", None)
    if version is None:
        try:
            from importlib import metadata
            dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(module, module)
            version = metadata.version(dist)
        except Exception:
            version = "unknown"
    return version


def load_tflite(path, s, inputs):
    module, interpreter_cls = _tflite_interpreter()
    if interpreter_cls is None:
        raise AgentError("runtime_missing", "no TFLite runtime imports on this device; "
                         "pip install ai-edge-litert (or tflite-runtime with numpy<2)")
    np = _np()
    try:
        interp = interpreter_cls(model_path=path, num_threads=s["threads"])
        details = interp.get_input_details()
        if s["batch_size"]:
            for d in details:
                shape = list(d["shape"])
                if shape and shape[0] != s["batch_size"]:
                    shape[0] = s["batch_size"]
                    interp.resize_tensor_input(d["index"], shape)
        interp.allocate_tensors()
    except Exception as e:
        text = str(e)
        if "op" in text.lower() and ("resolve" in text.lower() or "find" in text.lower() or "custom" in text.lower()):
            raise AgentError("unsupported_op", "%s cannot run this model: %s" % (module, _first_line(text)))
        raise AgentError("corrupt_model", "%s could not load the model: %s" % (module, _first_line(text)))
    rng = np.random.default_rng(s["seed"])
    descs = []
    for d in interp.get_input_details():
        shape = [int(x) for x in d["shape"]]
        data = _make_input(np, rng, shape, d["dtype"])
        interp.set_tensor(d["index"], data)
        descs.append(_input_desc(d["name"], data))
    return wall_timer(interp.invoke), _tflite_version(module), descs


def load_torch(path, s, inputs):
    torch = _try_import("torch")
    if torch is None:
        raise AgentError("runtime_missing", "torch is not installed on this device; pip install torch")
    cuda = s["accelerator"] == "cuda"
    if cuda and not torch.cuda.is_available():
        raise AgentError("runtime_missing", "torch %s here sees no CUDA device; use accelerator cpu or a CUDA "
                         "build of torch" % torch.__version__)
    torch.set_num_threads(s["threads"])
    torch.manual_seed(s["seed"])
    try:
        if path.endswith(".pt2"):
            program = torch.export.load(path)
            module = program.module()
            shapes = [(n.name, n.meta["val"]) for n in program.graph.nodes
                      if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
            specs = [(name, [int(d) for d in val.shape], val.dtype) for name, val in shapes]
        else:
            module = torch.jit.load(path, map_location="cpu")
            specs = None
    except Exception as e:
        raise AgentError("corrupt_model", "torch could not load the model: %s" % _first_line(str(e)))
    if specs is None:
        specs = [(i["name"], i["shape"], getattr(torch, i["dtype"])) for i in inputs or []]
        if not specs:
            raise AgentError("bad_request", "a TorchScript file declares no input shapes; "
                             "send inputs with the request or export to .pt2 (torch.export) instead")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[s["dtype"]]
    host = []
    gen = torch.Generator().manual_seed(s["seed"])
    for name, shape, in_dtype in specs:
        if s["batch_size"] and shape:
            shape = [s["batch_size"]] + list(shape[1:])
        if in_dtype.is_floating_point:
            host.append(torch.randn(shape, generator=gen).to(dtype))
        else:
            host.append(torch.randint(0, 10, shape, generator=gen, dtype=in_dtype))
    descs = [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
             for (n, _, _), t in zip(specs, host)]
    version = torch.__version__.split("+")[0]
    if not cuda:
        def run():
            with torch.inference_mode():
                module(*host)
        return wall_timer(run), version, descs
    return _cuda_sampler(torch, module, host, dtype, s), version, descs


def _cuda_sampler(torch, module, host, dtype, s):
    """Time on the GPU with CUDA events around the forward only (inputs already on the device), or around
    copy-in + forward + copy-out with include_copies; optionally as a replayed CUDA graph."""
    try:
        module = module.to("cuda")
        if dtype != torch.float32:
            module = module.to(dtype)
    except Exception as e:
        raise AgentError("runtime_error", "cannot move the model to cuda/%s: %s" % (s["dtype"], _first_line(str(e))))
    dev = [x.to("cuda") for x in host]
    if s["include_copies"]:
        host = [x.pin_memory() for x in host]

        def forward():
            for d, h in zip(dev, host):
                d.copy_(h, non_blocking=True)
            out = module(*dev)
            for o in (out if isinstance(out, (tuple, list)) else [out]):
                o.to("cpu", non_blocking=True)
    else:
        def forward():
            module(*dev)
    with torch.inference_mode():
        if s["cuda_graphs"]:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    forward()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                forward()
            step = graph.replay
        else:
            step = forward
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def sample():
        with torch.inference_mode():
            start.record()
            step()
            end.record()
            end.synchronize()
        return start.elapsed_time(end)
    return sample


def wall_timer(fn):
    """A sampler timing one call of fn with perf_counter_ns (ms)."""
    clock = time.perf_counter_ns

    def sample():
        t0 = clock()
        fn()
        return (clock() - t0) / 1e6
    return sample


LOADERS = {"onnxruntime": load_onnxruntime, "tflite": load_tflite, "torch": load_torch}


def _first_line(text):
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no message"


# ---------------------------------------------------------------------------------------------
# The timing protocol


def _pin(cores):
    """Pin every thread of this process (runtimes may already have pools) to `cores`."""
    if not hasattr(os, "sched_setaffinity"):
        raise AgentError("bad_request", "core pinning needs os.sched_setaffinity (Linux); drop the cores setting")
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    try:
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cores)
            except ProcessLookupError:
                pass
    except OSError as e:
        raise AgentError("bad_request", "cannot pin to cores %s: %s; pick cores from %s"
                         % (cores, e, sorted(os.sched_getaffinity(0))))


def robust_cv(samples):
    """IQR / 1.349 / median: the spread of the bulk of the samples, which std/mean is not once an
    occasional preempted run lands in the tail (it would keep every small model running to the cap)."""
    if len(samples) < 4:
        return float("inf")
    q = statistics.quantiles(samples, n=4)
    med = q[1]
    return (q[2] - q[0]) / 1.349 / med if med > 0 else float("inf")


def time_callable(sample, s):
    """Warm up, then time until both the minimum count and minimum time are reached; go on while the
    robust CV is above cv_target, up to a count or time cap (the minimums always win over the caps).

    `sample()` runs the model once and returns its time in ms (wall clock, or CUDA events). gc is off while
    timing so collector pauses do not land inside samples (as timeit does; no full collection first: with
    torch loaded one costs ~0.1 s per measurement).
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    min_ms, max_ms = s["repeats_min_s"] * 1e3, s["repeats_max_s"] * 1e3
    try:
        warmup = 0
        start = time.perf_counter()
        while warmup < s["warmup_min_count"] or (time.perf_counter() - start) < s["warmup_min_s"]:
            sample()
            warmup += 1
        warmup_s = time.perf_counter() - start
        samples = []
        total_ms = 0.0
        check_every = 10
        while True:
            dt = sample()
            samples.append(dt)
            total_ms += dt
            n = len(samples)
            if n < s["repeats_min_count"] or total_ms < min_ms:
                continue
            if n >= s["repeats_max_count"] or total_ms >= max_ms:
                break
            # The CV costs O(n log n): checking at geometric intervals keeps the loop's overhead negligible.
            if n >= check_every:
                check_every = int(n * 1.1) + 1
                if robust_cv(samples) <= s["cv_target"]:
                    break
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples, warmup, warmup_s


def measure(model, runtime, settings, workdir, inputs=None):
    s = dict(DEFAULT_SETTINGS)
    s.update(settings or {})
    unknown = set(s) - set(DEFAULT_SETTINGS)
    if unknown:
        raise AgentError("bad_request", "unknown settings %s; known: %s" % (sorted(unknown), sorted(DEFAULT_SETTINGS)))
    if s["accelerator"] == "cpu" and (s["dtype"] != "float32" or s["cuda_graphs"] or s["include_copies"]):
        raise AgentError("bad_request", "dtype, cuda_graphs and include_copies apply to accelerator cuda only")
    if s["accelerator"] != "cpu" and runtime == "tflite":
        raise AgentError("bad_request", "the tflite runner times on the CPU only; use accelerator cpu")
    if runtime not in LOADERS:
        raise AgentError("bad_request", "unknown runtime %r; choose one of %s" % (runtime, ", ".join(RUNTIMES)))
    path = model if os.path.isabs(model) else os.path.join(workdir, "models", model)
    if not os.path.isfile(path):
        raise AgentError("model_not_found", "model file %s is not on the device; upload it first" % path)
    if s["cores"]:
        _pin(s["cores"])
    t_load = time.perf_counter()
    sample, version, inputs = LOADERS[runtime](path, s, inputs)
    load_s = time.perf_counter() - t_load
    before = telemetry(s["accelerator"] == "cuda")
    try:
        samples, warmup, warmup_s = time_callable(sample, s)
    except Exception as e:
        raise AgentError("runtime_error", "%s failed while running the model: %s" % (runtime, _first_line(str(e))))
    after = telemetry(s["accelerator"] == "cuda")
    return {"samples_ms": samples, "warmup": warmup, "runtime_version": version, "inputs": inputs,
            "load_s": load_s, "warmup_s": warmup_s, "telemetry_before": before, "telemetry_after": after,
            "settings": s, "agent_version": AGENT_VERSION}


# ---------------------------------------------------------------------------------------------
# The request loop


def has(models, workdir):
    return {"present": [m for m in models if os.path.isfile(os.path.join(workdir, "models", m))]}


def handle(req, workdir):
    op = req.get("op")
    if op == "ping":
        return {"agent_version": AGENT_VERSION, "pid": os.getpid()}
    if op == "probe":
        return probe()
    if op == "has":
        return has(req.get("models") or [], workdir)
    if op == "measure":
        return measure(req.get("model") or "", req.get("runtime"), req.get("settings"), workdir, req.get("inputs"))
    raise AgentError("bad_request", "unknown op %r; known: ping, probe, has, measure, shutdown" % op)


def serve(inp, out, workdir):
    for line in inp:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError as e:
            reply = {"id": None, "ok": False, "error": {"kind": "bad_request", "message": "not JSON: %s" % e}}
        else:
            if req.get("op") == "shutdown":
                out.write(json.dumps({"id": req.get("id"), "ok": True, "result": {}}) + "\n")
                out.flush()
                return
            try:
                reply = {"id": req.get("id"), "ok": True, "result": handle(req, workdir)}
            except AgentError as e:
                reply = {"id": req.get("id"), "ok": False, "error": {"kind": e.kind, "message": e.message}}
            except Exception as e:  # a bug here must not kill a long collection: report it as a value
                traceback.print_exc(file=sys.stderr)
                reply = {"id": req.get("id"), "ok": False,
                         "error": {"kind": "agent_error", "message": "%s: %s" % (type(e).__name__, e)}}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description="latkit device agent (JSON lines on stdin/stdout)")
    parser.add_argument("--workdir", default=os.path.expanduser("~/.latkit"),
                        help="folder holding models/ (default ~/.latkit)")
    parser.add_argument("--version", action="store_true", help="print the agent version and exit")
    args = parser.parse_args(argv)
    if args.version:
        print(AGENT_VERSION)
        return 0
    # Keep the protocol stream clean: replies go to a duplicate of fd 1, and fd 1 becomes stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.makedirs(os.path.join(args.workdir, "models"), exist_ok=True)
    serve(sys.stdin, proto, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
