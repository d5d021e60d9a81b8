#!/usr/bin/env python3
"""latkit device agent: times models on the machine it runs on.

This one file is copied to every device, so it uses only the standard library plus
whichever runtime it times (numpy comes with all of them); psutil is used when present.
It must run on Python >= 3.8 and never imports latkit.

Protocol: newline-delimited JSON on stdin/stdout, one request per line, one reply per line. Every reply
line starts with FRAME, so whatever else a device prints on stdout (a login banner, a wrapper script)
is skipped by the host instead of breaking it.

    -> {"id": 7, "op": "measure", "model": "<sha256>.onnx", "runtime": "onnxruntime", "settings": {...},
        "inputs": [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}]}   # inputs: TorchScript only
    <- FRAME {"id": 7, "ok": true, "result": {"samples_ms": [...], "runtime_version": "...", ...}}
    <- FRAME {"id": 7, "ok": false, "error": {"kind": "unsupported_op", "message": "..."}}

Ops (OPS, and shutdown): `health` is what `latkit doctor` judges: governors,
thermal sensors, load, busy processes on the agent's cores, free disk (no lease needed). `measure` needs the
device lease (an flock held for the agent's lifetime, so two hosts never time on one device at once). Loaded sessions are kept across
requests (Sessions: LRU, bounded by count and memory); a reply says session_reused and carries the load
time and first inference of the session's fresh load. Models arrive out of band into
<workdir>/models/. The agent exits within a second or two once its host is gone (stdin closed or
parent changed), also in the middle of a measurement. Runtime libraries sometimes print to file
descriptor 1, so replies go to a private duplicate of stdout and fd 1 is pointed at stderr.
"""
import argparse
import collections
import dataclasses
import errno
import gc
import glob
import json
import math
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

AGENT_VERSION = "0.3.6"  # 0.3: sessions kept across requests, load_s without the runtime import; 0.3.1: stops on the CI of p10 on a CPU; 0.3.2: rounds of 0.1-0.25 s; 0.3.3: never more samples than repeats_max_count, the health op (latkit doctor); 0.3.4: defaults 2 warmup, >= 3 runs, 0.1-0.3 s a round; 0.3.5: energy (RAPL, NVML); 0.3.6: cpu_samples_ms, the calling thread's CPU time of each run on a CPU
FRAME = "@@latkit "  # starts every reply line; the host ignores lines without it
EXIT_GRACE_S = 3.0      # once stdin closes, a measurement still running this much later is abandoned

# The timing protocol's defaults; the host sends its own Settings, these apply to missing keys.
DEFAULT_SETTINGS = {
    "threads": 1,          # intra-op threads of the runtime
    "cores": None,         # CPU ids to pin the agent to (os.sched_setaffinity); None = the agent's own affinity
    "accelerator": "cpu",  # "cpu" or "cuda"
    "batch_size": None,    # fills a dynamic first dimension; None = the model's declared size (1 if dynamic)
    "warmup_min_count": 2,
    "warmup_min_s": 0.05,
    "repeats_min_count": 3,
    "repeats_min_s": 0.1,
    "repeats_max_count": 10000,
    "repeats_max_s": 0.3,
    "ci_target": 0.005,    # stop once the 95 % CI of latency_ms's quantile is within +-0.5 % of it (or at a cap)
    "seed": 0,             # seed of the generated inputs
    "dtype": "float32",    # torch on cuda: float32, float16 or bfloat16 weights and inputs
    "cuda_graphs": False,  # torch on cuda: capture the forward once as a CUDA graph and replay it
    "include_copies": False,  # torch on cuda: time host->device input and device->host output copies too
    "cooldown_temp_c": None,  # wait until the hottest sensor is at or below this before timing
    "cooldown_max_s": 300.0,  # ... but no longer than this
    "energy": False,       # read the device's energy counter (RAPL on a CPU, NVML on cuda) around the timed runs
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


def _sys(path):
    """A /sys or /proc path under LATKIT_SYSROOT (default /): tests and containers point it at a fake tree."""
    return os.path.join(os.environ.get("LATKIT_SYSROOT", "/"), path.lstrip("/"))


def _temp_c():
    """Hottest readable sensor: psutil first, /sys/class/thermal as fallback (only that under LATKIT_SYSROOT);
    None where unreadable."""
    psutil = None if os.environ.get("LATKIT_SYSROOT") else _try_import("psutil")
    if psutil is not None and hasattr(psutil, "sensors_temperatures"):
        try:
            temps = [t.current for ts in psutil.sensors_temperatures().values() for t in ts if t.current]
            if temps:
                return round(max(temps), 1)
        except (OSError, NotImplementedError):
            pass
    temps = []
    for path in glob.glob(_sys("/sys/class/thermal/thermal_zone*/temp")):
        try:
            temps.append(int(_read(path)) / 1000.0)
        except (TypeError, ValueError):
            pass
    return round(max(temps), 1) if temps else None


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def _nvml_handle(nvml, index):
    """NVML's handle of cuda:`index`. NVML numbers GPUs as the driver does whatever CUDA_VISIBLE_DEVICES says,
    so where torch has CUDA up the GPU is found by its UUID; by index only where CUDA sees every GPU."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():  # never starts CUDA for a CPU job's telemetry
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else "GPU-" + uuid)
    except Exception:
        pass
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        raise ValueError("CUDA_VISIBLE_DEVICES is set and NVML cannot match cuda:%d by its UUID" % index)
    return nvml.nvmlDeviceGetHandleByIndex(index)


_GPU_FIELDS = ("gpu_sm_mhz", "gpu_mem_mhz", "gpu_temp_c", "gpu_power_w", "gpu_clocks_locked")


def gpu_telemetry(index=0):
    """Clocks, temperature, power and whether application clocks are pinned, of GPU `index`: NVML
    (nvidia-ml-py) when it imports, nvidia-smi otherwise; all None where there is no NVIDIA GPU."""
    nvml = _try_import("pynvml")
    if nvml is not None:
        try:
            nvml.nvmlInit()
            h = _nvml_handle(nvml, index)
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


def telemetry(gpu=False):
    try:
        load1 = round(os.getloadavg()[0], 2)
    except OSError:
        load1 = None
    t = {"freq_mhz": _cpu_freq_mhz(), "temp_c": _temp_c(), "load1": load1}
    if gpu:
        t.update(gpu_telemetry())
    return t


def _run(cmd):
    """stdout of a device tool (vcgencmd, nvpmodel), or None where it is absent or fails."""
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def throttle_state(cpus):
    """Why the device may be running below its rated speed right now: '' when it can tell and saw nothing,
    None when it cannot tell. Sources: cpufreq (current vs rated maximum, and a policy cap below it) of the
    CPUs we run on, Raspberry Pi `vcgencmd get_throttled`, Jetson `nvpmodel -q` (a power mode below MAXN)."""
    reasons, known = [], False
    for c in cpus:
        base = _sys("/sys/devices/system/cpu/cpu%d/cpufreq/" % c)
        cur, cap, rated = (_khz_to_mhz(_read(base + f)) for f in ("scaling_cur_freq", "scaling_max_freq",
                                                                    "cpuinfo_max_freq"))
        if not (cur and rated):
            continue
        known = True
        if cap and cap < 0.99 * rated:
            reasons.append("cpu%d capped at %.0f of %.0f MHz" % (c, cap, rated))
        elif cur < 0.75 * rated:
            reasons.append("cpu%d at %.0f of %.0f MHz" % (c, cur, rated))
    out = _run(["vcgencmd", "get_throttled"])
    if out and "=" in out:
        known = True
        try:
            bits = int(out.split("=", 1)[1].strip(), 16)
        except ValueError:
            bits = 0
        if bits & 0xF:  # under-voltage, frequency capped, throttled, soft temperature limit: now
            reasons.append("vcgencmd throttled=0x%x" % bits)
    out = _run(["nvpmodel", "-q"])
    if out:
        known = True
        mode = next((line.split(":", 1)[1].strip() for line in out.splitlines() if "Power Mode" in line), "")
        if mode and mode.upper() != "MAXN":
            reasons.append("nvpmodel power mode %s" % mode)
    return "; ".join(reasons) if reasons else ("" if known else None)


def _governors(cpus):
    """{governor: [cpu ids]} over the CPUs we run on; {} where cpufreq is absent (many VMs)."""
    found = {}
    for c in cpus:
        g = _read(_sys("/sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor" % c))
        if g:
            found.setdefault(g, []).append(c)
    return found


def _sensors():
    """Every readable temperature sensor as {name, temp_c}: psutil first, /sys/class/thermal as fallback
    (only that under LATKIT_SYSROOT)."""
    psutil = None if os.environ.get("LATKIT_SYSROOT") else _try_import("psutil")
    if psutil is not None and hasattr(psutil, "sensors_temperatures"):
        try:
            found = [{"name": "%s/%s" % (chip, t.label or i), "temp_c": round(t.current, 1)}
                     for chip, ts in psutil.sensors_temperatures().items() for i, t in enumerate(ts) if t.current]
            if found:
                return found
        except (OSError, NotImplementedError):
            pass
    found = []
    for path in sorted(glob.glob(_sys("/sys/class/thermal/thermal_zone*/temp"))):
        try:
            temp = int(_read(path)) / 1000.0
        except (TypeError, ValueError):
            continue
        kind = _read(os.path.join(os.path.dirname(path), "type")) or os.path.basename(os.path.dirname(path))
        found.append({"name": kind, "temp_c": round(temp, 1)})
    return found


def _proc_cpu():
    """{pid: (name, CPU seconds so far, the CPU it last ran on)} from /proc; None without /proc."""
    if not os.path.isdir("/proc/self"):
        return None
    tick, out = float(os.sysconf("SC_CLK_TCK")), {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        text = _read("/proc/%s/stat" % pid)
        if not text or ")" not in text:
            continue
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        try:
            out[int(pid)] = (name, (int(rest[11]) + int(rest[12])) / tick, int(rest[36]))
        except (IndexError, ValueError):
            continue
    return out


def busy_processes(cpus, window_s=0.5, min_share=0.1):
    """Processes other than this agent and its parent that used at least `min_share` of a CPU over `window_s`,
    busiest first, each with the CPUs it ran on (at the start and end of the window); None without /proc.
    A process on the cores a device is pinned to competes with the timed runs."""
    before = _proc_cpu()
    if before is None:
        return None
    t0 = time.monotonic()
    time.sleep(window_s)
    after, dt = _proc_cpu() or {}, time.monotonic() - t0
    mine, found = {os.getpid(), os.getppid()}, []
    for pid, (name, cpu_s, last) in after.items():
        if pid in mine or pid not in before:
            continue
        share = (cpu_s - before[pid][1]) / dt
        if share >= min_share:
            found.append({"pid": pid, "name": name, "cpu_share": round(share, 2),
                          "cpus": sorted({before[pid][2], last})})
    return sorted(found, key=lambda p: -p["cpu_share"])


def cooldown(limit_c, max_s):
    """Wait until the hottest sensor reads <= limit_c (at most max_s). Returns (seconds waited, reached);
    reached is None where no sensor can be read."""
    if limit_c is None:
        return 0.0, None
    t0 = time.perf_counter()
    temp = _temp_c()
    if temp is None:
        return 0.0, None
    while temp > limit_c and time.perf_counter() - t0 < max_s:
        time.sleep(1.0)
        temp = _temp_c()
    return round(time.perf_counter() - t0, 3), temp <= limit_c


def peak_rss_reset():
    """Reset the kernel's peak-RSS mark (VmHWM) so the next read is this model's; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    return None


# ---------------------------------------------------------------------------------------------
# Runners: load a model, generate inputs from its declared shapes, return a zero-argument callable


def _first_line(text):
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no message"


def cpu_timer(fn):
    """A sampler timing one call of fn on a CPU: (wall ms by perf_counter_ns, the calling thread's CPU ms by
    thread_time_ns). With one thread the runtimes compute in the calling thread, so its CPU clock counts the
    model's own work and leaves out the slices the host gave to other processes. The CPU clock is read outside
    the wall clock, so the wall clock times what it did before (CPU time gains the clock reads, < 1 us)."""
    wall, cpu = time.perf_counter_ns, time.thread_time_ns

    def sample():
        c0 = cpu()
        t0 = wall()
        fn()
        t1 = wall()
        return (t1 - t0) / 1e6, (cpu() - c0) / 1e6
    return sample


@dataclasses.dataclass
class Loaded:
    """What a loader returns: `sample()` times one run, (ms, the calling thread's CPU ms or None); the runtime's
    version, the inputs generated and the settings as applied (read back where the runtime can say). Optional: `reapply()` restores process-wide
    settings before a reused session runs, `first_ms`/`launch_ms` where the loader timed them itself, and on a
    GPU `gpu_mb()`/`gpu_peak_mb()` (memory now and at peak) and `gpu_total_mb`."""

    sample: object
    version: object
    inputs: object
    applied: dict
    reapply: object = None
    first_ms: object = None
    launch_ms: object = None
    gpu_mb: object = None
    gpu_peak_mb: object = None
    gpu_total_mb: object = None


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
    return Loaded(cpu_timer(lambda: sess.run(None, feeds)), ort.__version__,
                  [_input_desc(k, v) for k, v in feeds.items()],
                  {"threads": sess.get_session_options().intra_op_num_threads})


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
    # the Interpreter has no getter for its thread count: the requested one is what it was built with
    return Loaded(cpu_timer(interp.invoke), _tflite_version(module), descs, {"threads": s["threads"]})


def _cuda_sampler(torch, module, host, dtype, s):
    """Time on the GPU with CUDA events around the forward only (inputs already on the device), or around
    copy-in + forward + copy-out with include_copies. With cuda_graphs the forward is captured once and
    replayed, so the GPU is timed rather than the host's kernel launches; a capture that fails falls back
    to eager and says why. The host time to enqueue one eager forward (launch_ms) is kept either way:
    an eager row whose latency is no longer than that measured the host CPU, not the GPU."""
    # cuDNN picks algorithms by heuristics, the same in every process: benchmark mode would pick by timing
    # races, so two runs of one model could time different kernels
    torch.backends.cudnn.benchmark = False
    try:
        module = module.to("cuda")
        if dtype != torch.float32:
            module = module.to(dtype)
    except Exception as e:
        raise AgentError("runtime_error", "cannot move the model to cuda/%s: %s" % (s["dtype"], _first_line(str(e))))
    dev = [x.to("cuda") for x in host]
    if isinstance(module, torch.jit.ScriptModule):
        # TorchScript's profiling executor would compile fusion kernels (NVRTC) on the first calls, possibly
        # inside the graph capture, and then time other kernels than eager; its simple executor runs the
        # traced aten ops as they are, the same kernels a .pt2 program launches
        def call(*xs):
            with torch.jit.optimized_execution(False):
                return module(*xs)
    else:
        call = module
    if s["include_copies"]:
        host = [x.pin_memory() for x in host]

        def forward():
            for d, h in zip(dev, host):
                d.copy_(h, non_blocking=True)
            out = call(*dev)
            for o in (out if isinstance(out, (tuple, list)) else [out]):
                o.to("cpu", non_blocking=True)
    else:
        def forward():
            call(*dev)
    torch.cuda.reset_peak_memory_stats()
    clock = time.perf_counter
    with torch.inference_mode():
        t0 = clock()
        forward()
        torch.cuda.synchronize()
        first_ms = (clock() - t0) * 1e3
        launches = []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = clock()
            forward()
            launches.append((clock() - t0) * 1e3)
        torch.cuda.synchronize()
        step, fallback = forward, ""
        if s["cuda_graphs"]:
            try:
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
            except Exception as e:
                fallback = "capture failed, timed eager: %s" % _first_line(str(e))
                torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    # a ~20 us spin kernel ahead of the start event keeps the GPU busy while the host enqueues the event and
    # the forward, so the host's launch gap (~10-20 us, a few % of a small batch-1 graph) stays out of the time
    spin = getattr(torch.cuda, "_sleep", None)

    def sample():
        with torch.inference_mode():
            if spin is not None:
                spin(40000)
            start.record()
            step()
            end.record()
            end.synchronize()
        return start.elapsed_time(end), None
    param = next(iter(module.parameters()), None)
    applied = {"dtype": str(param.dtype if param is not None else dtype).replace("torch.", ""),
               "cuda_graphs": step is not forward, "graph_fallback": fallback,
               "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
               "tf32": bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)}
    return Loaded(sample, None, None, applied, first_ms=first_ms, launch_ms=sorted(launches)[2],
                  gpu_mb=lambda: torch.cuda.memory_allocated() / 2 ** 20,
                  gpu_peak_mb=lambda: round(torch.cuda.max_memory_allocated() / 2 ** 20, 1),
                  gpu_total_mb=torch.cuda.get_device_properties(0).total_memory / 2 ** 20)


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
    # the intra-op thread count is process-wide: a reused session sets its own again
    reapply = lambda: torch.set_num_threads(s["threads"])  # noqa: E731
    if not cuda:
        def run():
            with torch.inference_mode():
                module(*host)
        return Loaded(cpu_timer(run), version, descs, {"threads": torch.get_num_threads()}, reapply)
    loaded = _cuda_sampler(torch, module, host, dtype, s)
    loaded.version, loaded.inputs, loaded.reapply = version, descs, reapply
    loaded.applied["threads"] = torch.get_num_threads()
    return loaded


LOADERS = {"onnxruntime": load_onnxruntime, "tflite": load_tflite, "torch": load_torch}


# ---------------------------------------------------------------------------------------------
# The timing protocol

# the agent's affinity at start: what an unpinned job runs with
_BASE_AFFINITY = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def _pin(cores):
    """Pin every thread of this process (runtimes may already have pools) to `cores`, or back to the agent's
    own affinity when cores is None (a pinning must not stick to later jobs). Returns the affinity read back."""
    if not hasattr(os, "sched_setaffinity"):
        if cores:
            raise AgentError("bad_request", "core pinning needs os.sched_setaffinity (Linux); drop the cores setting")
        return None
    target = set(cores) if cores else _BASE_AFFINITY
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    try:
        for tid in tids:
            try:
                os.sched_setaffinity(tid, target)
            except ProcessLookupError:
                pass
    except (OSError, OverflowError) as e:  # OverflowError: an id past what the kernel interface takes
        raise AgentError("bad_request", "cannot pin to cores %s: %s; pick cores from %s"
                         % (cores, e, sorted(_BASE_AFFINITY)))
    return sorted(os.sched_getaffinity(0))


def quantile(sorted_x, q):
    """Linear-interpolation quantile of sorted data (numpy's default), so host and agent agree exactly."""
    pos = q * (len(sorted_x) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_x) - 1)
    return sorted_x[lo] + (pos - lo) * (sorted_x[hi] - sorted_x[lo])


# The quantile latency_ms is on each accelerator (the host's collector/measurement.py LATENCY_STATISTIC):
# timing stops on the precision of that estimate, not of another one.
CI_QUANTILE = {"cpu": 0.1, "cuda": 0.5}


def quantile_ci_rel(samples, q=0.5, z=1.96):
    """Half-width of the distribution-free 95 % confidence interval of the q-quantile (order statistics
    n*q -+ z*sqrt(n*q*(1-q))), relative to the quantile. Unlike the spread of the samples, it shrinks as
    samples are added, so it can serve as a stopping rule on any host."""
    x = sorted(samples)
    n = len(x)
    if n < 6:
        return float("inf")
    half = z * math.sqrt(n * q * (1.0 - q))
    lo = max(0, int(math.floor(n * q - half)) - 1)
    hi = min(n - 1, int(math.ceil(n * q + half)) - 1)
    v = quantile(x, q)
    return (x[hi] - x[lo]) / 2.0 / v if v > 0 else float("inf")


def time_callable(sample, s, meter=None):
    """Warm up, then time until both the minimum count and the minimum time are reached; go on until the
    95 % CI of the statistic latency_ms will be (CI_QUANTILE: p10 on a CPU, the median on a GPU) is within
    ci_target, or a count or time cap is reached (the minimums win over the time cap; the count cap bounds
    the samples always). Returns the samples and why timing stopped. An EnergyMeter `meter` reads its
    counter right before the first timed run and after the last (with more runs where that span is too short).

    `sample()` runs the model once and returns its time in ms (wall clock, or CUDA events) and on a CPU the
    calling thread's CPU time in ms, kept as cpu_samples_ms (same order; not on CUDA). gc is off while
    timing so collector pauses do not land inside samples (as timeit does; no full collection first: with
    torch loaded one costs ~0.1 s per measurement).
    """
    q = CI_QUANTILE[s["accelerator"]]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    min_ms, max_ms = s["repeats_min_s"] * 1e3, s["repeats_max_s"] * 1e3
    try:
        warmup, first_ms = 0, None
        start = time.perf_counter()
        while warmup < s["warmup_min_count"] or (time.perf_counter() - start) < s["warmup_min_s"]:
            dt = sample()[0]
            first_ms = dt if first_ms is None else first_ms
            warmup += 1
        warmup_s = time.perf_counter() - start
        if meter is not None:
            meter.start()
        samples, cpu_samples, total_ms, check_at = [], [], 0.0, 0
        while True:
            dt, cpu_dt = sample()
            samples.append(dt)
            cpu_samples.append(cpu_dt)
            total_ms += dt
            n = len(samples)
            # the minimum time yields to the count cap: the host refuses a reply of more samples than it sent
            # as the cap (repeats_max_count >= repeats_min_count), so a fast model cannot outgrow its bound
            if n < s["repeats_min_count"] or (total_ms < min_ms and n < s["repeats_max_count"]):
                continue
            # sorting is O(n log n): checking at geometric intervals keeps the loop's overhead negligible
            if n >= check_at:
                check_at = int(n * 1.1) + 1
                if quantile_ci_rel(samples, q) <= s["ci_target"]:
                    stopped_by = "ci_target"
                    break
            if n >= s["repeats_max_count"]:
                stopped_by = "max_count"
                break
            if total_ms >= max_ms:
                stopped_by = "max_time"
                break
        if meter is not None:
            meter.stop(sample, len(samples))
    finally:
        if gc_was_enabled:
            gc.enable()
    timed = {"samples_ms": samples, "warmup": warmup, "warmup_s": warmup_s, "first_ms": first_ms,
             "stopped_by": stopped_by, "ci_rel": quantile_ci_rel(samples, q)}
    if s["accelerator"] == "cpu":
        timed["cpu_samples_ms"] = cpu_samples
    return timed


# ---------------------------------------------------------------------------------------------
# Energy

# Per counter: (seconds of idle reading before warmup, the least span the timed runs are read over). RAPL's
# counter moves every ~1 ms; NVML's total-energy counter every 20-100 ms, so its span is 1 s (<= 10 % from
# the edges at the slowest update).
ENERGY_SPANS = {"rapl": (0.2, 0.2), "nvml": (0.5, 1.0)}
MAX_COUNTER_W = 5000.0  # a counter step meaning more than this per package or GPU is a glitch, not energy


class EnergyUnavailable(Exception):
    """Why energy cannot be read here: the row's energy columns stay null and this goes to its warnings."""


def _counter_value(path):
    """A powercap file's whole number (µJ), or EnergyUnavailable saying why not."""
    try:
        with open(path) as f:
            text = f.read(64).strip()
    except PermissionError:
        raise EnergyUnavailable("cannot read %s: permission denied (energy_uj is root-only on Linux >= 5.10: run "
                                "the agent as root or make the file readable)" % path)
    except (OSError, UnicodeDecodeError) as e:
        raise EnergyUnavailable("cannot read %s: %s" % (path, getattr(e, "strerror", None) or e))
    if not text.isdigit() or len(text) > 20 or int(text) >= 2 ** 64:
        raise EnergyUnavailable("%s holds %r, not a counter of microjoules" % (path, text[:24]))
    return int(text)


class Rapl:
    """Linux powercap's RAPL package domains (`intel-rapl:N` whose `name` is package-N; AMD CPUs appear under the
    same names on recent kernels), `energy_uj` summed over packages, each unwrapped at its
    `max_energy_range_uj`. Subdomains (`intel-rapl:N:M`: core, uncore, dram) are inside their package; psys
    would count the packages twice. The counter is package-wide: other processes count too. The tree is read
    under LATKIT_SYSROOT (default /), which tests point at a fixture of the same layout."""

    method = "rapl"

    def __init__(self):
        root = _sys("/sys/class/powercap")
        self.domains = []  # (energy_uj path, max_energy_range_uj)
        for d in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
            number = os.path.basename(d).split(":")[1:]
            if len(number) == 1 and number[0].isdigit() and (_read(os.path.join(d, "name")) or "").startswith("package"):
                top = _counter_value(os.path.join(d, "max_energy_range_uj"))
                if top <= 0:
                    raise EnergyUnavailable("%s/max_energy_range_uj is 0, no counter range" % d)
                self.domains.append((os.path.join(d, "energy_uj"), top))
        if not self.domains:
            raise EnergyUnavailable("no RAPL package domain under %s (a VM, or a kernel without powercap)" % root)
        self.read()  # unreadable (root-only) files: said now, before any timing

    def read(self):
        return tuple(_counter_value(path) for path, _ in self.domains)

    def joules(self, a, b, seconds):
        total = 0
        for (path, top), x, y in zip(self.domains, a, b):
            step = y - x if y >= x else top - x + y  # wrapped once at max_energy_range_uj
            if x > top or y > top or step > MAX_COUNTER_W * 1e6 * seconds:
                raise EnergyUnavailable("%s went from %d to %d µJ in %.3f s (range %d): not a plausible step; "
                                        "energy not recorded" % (path, x, y, seconds, top))
            total += step
        return total / 1e6


class Nvml:
    """NVML's total-energy counter of the GPU timed (mJ since the driver loaded; Volta and newer): nvidia-ml-py."""

    method = "nvml"

    def __init__(self, index=0):
        self.nvml = _try_import("pynvml")
        if self.nvml is None:
            raise EnergyUnavailable("pynvml is not importable on the device; pip install nvidia-ml-py")
        try:
            self.nvml.nvmlInit()
            self.handle = _nvml_handle(self.nvml, index)
        except Exception as e:  # NVMLError and its kin: no driver, no GPU
            raise EnergyUnavailable("NVML cannot open GPU %d: %s" % (index, _first_line(str(e))))
        self.read()

    def read(self):
        try:
            return (int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)),)
        except Exception as e:  # NVMLError_NotSupported before Volta
            raise EnergyUnavailable("NVML has no total-energy counter here (%s; Volta or newer has one)"
                                    % _first_line(str(e)))

    def joules(self, a, b, seconds):
        if not 0 <= b[0] - a[0] <= MAX_COUNTER_W * 1e3 * seconds:
            raise EnergyUnavailable("NVML's energy counter went from %d to %d mJ in %.3f s: not a plausible step; "
                                    "energy not recorded" % (a[0], b[0], seconds))
        return (b[0] - a[0]) / 1e3


def energy_counters():
    """For each counter `--energy` can read (rapl, nvml): "ok", or why it cannot be read here."""
    out = {}
    for counter in (Rapl, Nvml):
        try:
            counter()
            out[counter.method] = "ok"
        except EnergyUnavailable as e:
            out[counter.method] = str(e)
    return out


def health(workdir):
    """What spoils timing on this device now: the `health` op, judged by `latkit doctor` on the host."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        free = shutil.disk_usage(workdir).free
    except OSError:
        free = None
    return {"cpus": cpus, "cpu_count": os.cpu_count(), "governors": _governors(cpus), "sensors": _sensors(),
            "loadavg": load, "busy": busy_processes(cpus), "throttle": throttle_state(cpus),
            "workdir": os.path.abspath(workdir), "disk_free_mb": None if free is None else free // 2 ** 20,
            "energy": energy_counters()}


class EnergyMeter:
    """Energy per inference over one request's timed runs: the counter read right before the first timed run
    and after the last, the span extended with more runs (not kept as samples) to the counter's least span;
    the idle power over a span before warmup, reported beside it, not subtracted. Any failure leaves the
    fields null and says why in energy_warning; the latency is kept whatever happens here."""

    def __init__(self, accelerator):
        self.counter = self.warning = self.idle_w = self.joules = self.seconds = self.runs = None
        self.a, self.t0 = None, 0.0
        try:
            self.counter = Nvml() if accelerator == "cuda" else Rapl()
        except EnergyUnavailable as e:
            self.fail(e)

    def fail(self, e):
        self.counter, self.warning = None, "energy: %s" % e
        self.idle_w = self.joules = self.seconds = self.runs = None

    def idle(self):
        if self.counter is not None:
            try:
                a, t = self.counter.read(), time.perf_counter()
                time.sleep(ENERGY_SPANS[self.counter.method][0])
                span = time.perf_counter() - t
                self.idle_w = self.counter.joules(a, self.counter.read(), span) / span
            except EnergyUnavailable as e:
                self.fail(e)

    def start(self):
        if self.counter is not None:
            try:
                self.a, self.t0 = self.counter.read(), time.perf_counter()
            except EnergyUnavailable as e:
                self.fail(e)

    def stop(self, sample, runs):
        if self.counter is None:
            return
        while time.perf_counter() - self.t0 < ENERGY_SPANS[self.counter.method][1]:
            sample()
            runs += 1
        try:
            b, span = self.counter.read(), time.perf_counter() - self.t0
            self.joules, self.seconds, self.runs = self.counter.joules(self.a, b, span), span, runs
            if self.joules <= 0:
                raise EnergyUnavailable("the %s counter did not move in %.3f s" % (self.counter.method, span))
        except EnergyUnavailable as e:
            self.fail(e)

    def reply(self):
        return {"energy_method": self.counter.method if self.counter is not None else None,
                "energy_j": self.joules, "energy_s": self.seconds, "energy_runs": self.runs,
                "idle_power_w": self.idle_w, "energy_warning": self.warning}


def _utc(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)


_WHOLE_SETTINGS = {"threads": 1, "warmup_min_count": 0, "repeats_min_count": 1, "repeats_max_count": 1, "seed": 0}
_SECOND_SETTINGS = ("warmup_min_s", "repeats_min_s", "repeats_max_s", "cooldown_max_s")


def _whole(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _real(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_settings(s, runtime):
    """Refuse settings of the wrong type or range, or that `runtime` cannot honour, as a bad request, before they
    reach a runtime (where a negative thread count would surface as a misleading load error)."""
    unknown = set(s) - set(DEFAULT_SETTINGS)
    if unknown:
        raise AgentError("bad_request", "unknown settings %s; known: %s" % (sorted(unknown), sorted(DEFAULT_SETTINGS)))

    def bad(key, want):
        raise AgentError("bad_request", "setting %s must be %s, got %r" % (key, want, s[key]))
    for key, lo in _WHOLE_SETTINGS.items():
        if not _whole(s[key]) or s[key] < lo:
            bad(key, "a whole number >= %d" % lo)
    for key in _SECOND_SETTINGS:
        if not _real(s[key]) or s[key] < 0:
            bad(key, "a number of seconds >= 0")
    if not _real(s["ci_target"]) or s["ci_target"] <= 0:
        bad("ci_target", "a number > 0")
    if s["batch_size"] is not None and (not _whole(s["batch_size"]) or s["batch_size"] < 1):
        bad("batch_size", "null or a whole number >= 1")
    if s["cores"] is not None and not (isinstance(s["cores"], list) and s["cores"]
                                       and all(_whole(c) and c >= 0 for c in s["cores"])):
        bad("cores", "null or a list of CPU ids")
    if s["cooldown_temp_c"] is not None and not _real(s["cooldown_temp_c"]):
        bad("cooldown_temp_c", "null or a number of degrees")
    if s["accelerator"] not in ("cpu", "cuda"):
        bad("accelerator", "cpu or cuda")
    if s["dtype"] not in ("float32", "float16", "bfloat16"):
        bad("dtype", "float32, float16 or bfloat16")
    for key in ("cuda_graphs", "include_copies", "energy"):
        if not isinstance(s[key], bool):
            bad(key, "true or false")
    if s["accelerator"] == "cpu" and (s["dtype"] != "float32" or s["cuda_graphs"] or s["include_copies"]):
        raise AgentError("bad_request", "dtype, cuda_graphs and include_copies apply to accelerator cuda only")
    if s["accelerator"] != "cpu" and runtime == "tflite":
        raise AgentError("bad_request", "the tflite runner times on the CPU only; use accelerator cpu")
    if runtime not in LOADERS:
        raise AgentError("bad_request", "unknown runtime %r; choose one of %s" % (runtime, ", ".join(RUNTIMES)))


# The runtime each model file extension is for, and the names of the formats in messages.
RUNTIME_OF_EXTENSION = {".onnx": "onnxruntime", ".tflite": "tflite", ".pt2": "torch", ".pt": "torch", ".ts": "torch"}
FORMAT_OF_RUNTIME = {"onnxruntime": "an ONNX model", "tflite": "a TFLite model",
                     "torch": "a torch.export or TorchScript archive"}


def sniff_runtime(path):
    """The runtime a model file's content is for, or None when its first bytes say nothing: TFLite
    flatbuffers carry the identifier TFL3 at byte 4, torch.export and TorchScript files are zip archives, and
    an ONNX model is a protobuf whose first field is a small ir_version (bytes 08 0N)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if len(head) > 1 and head[0] == 0x08 and 0 < head[1] < 0x40:
        return "onnxruntime"
    return None


def check_format(path, runtime):
    """A wrong_runtime error when the file is for another runtime than the one asked for: by its content
    where that is recognisable, else by its extension. Unrecognisable content is left to the runtime."""
    found = sniff_runtime(path)
    named = RUNTIME_OF_EXTENSION.get(os.path.splitext(path)[1].lower())
    if found is not None and found != runtime:
        raise AgentError("wrong_runtime", "the content of %s is %s, which %s cannot run; use runtime %s"
                         % (os.path.basename(path), FORMAT_OF_RUNTIME[found], runtime, found))
    if found is None and named is not None and named != runtime:
        raise AgentError("wrong_runtime", "the name of %s says %s, which %s cannot run; use runtime %s"
                         % (os.path.basename(path), FORMAT_OF_RUNTIME[named], runtime, named))


_SESSION_SETTINGS = ("threads", "accelerator", "batch_size", "seed", "dtype", "cuda_graphs", "include_copies")


def session_key(path, runtime, s, inputs):
    """Everything that shapes a loaded session: the file (path and identity, so a replaced file loads
    again), the runtime and the settings a loader reads. Not the cores: pinning is applied to every thread
    of the agent before each timing, whatever session runs."""
    st = os.stat(path)
    return (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, runtime,
            json.dumps([s[k] for k in _SESSION_SETTINGS] + [inputs], sort_keys=True))


class Session:
    """One loaded model and what its fresh load measured (load time, first inference, memory), which
    every later request on it reports again beside session_reused=true."""

    def __init__(self, loaded, load_s):
        self.loaded, self.load_s = loaded, load_s
        self.first_ms = self.peak_rss_mb = self.gpu_peak_mb = None
        self.rss_mb = self.gpu_mb = 0.0  # what loading and first timing it added to the agent


class Sessions:
    """Loaded sessions kept across requests (rounds and jobs), least recently used evicted first, bounded
    by count and by memory: the sum of the sessions' resident-memory growth at load (read from RSS) stays
    under `memory_fraction` of physical memory, and their GPU allocations under that fraction of the GPU's.
    A .pt2 load costs ~0.6 s; a session costs memory only, and an idle one is not touched while another
    model is timed."""

    def __init__(self, max_count=64, memory_fraction=0.25):
        self.max_count, self.memory_fraction = max_count, memory_fraction
        self.max_mb = (_mem_total_mb() or 1024) * memory_fraction
        self.entries = collections.OrderedDict()

    def get(self, key):
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def others_mb(self, key):
        """(RSS MB, GPU MB) held by the cached sessions other than `key`."""
        others = [e for k, e in self.entries.items() if k != key]
        return sum(e.rss_mb for e in others), sum(e.gpu_mb for e in others)

    def put(self, key, entry, gpu_total_mb=None):
        self.entries[key] = entry
        gpu_max = gpu_total_mb * self.memory_fraction if gpu_total_mb else float("inf")
        n = len(self.entries)
        while len(self.entries) > 1 and (
                len(self.entries) > self.max_count
                or sum(e.rss_mb for e in self.entries.values()) > self.max_mb
                or sum(e.gpu_mb for e in self.entries.values()) > gpu_max):
            self.entries.popitem(last=False)
        if len(self.entries) > self.max_count:  # max_count 0: keep nothing
            self.entries.clear()
        if len(self.entries) < n:
            gc.collect()  # runtimes free their buffers now, not inside a later timing (gc is off there)


def _import_runtime(runtime):
    if runtime == "tflite":
        _tflite_interpreter()
    else:
        _try_import(runtime)


def _rss_mb():
    text = _read("/proc/self/statm")
    return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20 if text else 0.0


def measure(model, runtime, settings, workdir, inputs=None, sessions=None):
    s = dict(DEFAULT_SETTINGS)
    s.update(settings or {})
    check_settings(s, runtime)
    path = model if os.path.isabs(model) else os.path.join(workdir, "models", model)
    if not os.path.isfile(path):
        raise AgentError("model_not_found", "model file %s is not on the device; upload it first" % path)
    check_format(path, runtime)
    sessions = sessions if sessions is not None else Sessions(0)
    _pin(s["cores"])  # before loading, so runtime thread pools start inside the affinity
    cooldown_s, cooled = cooldown(s["cooldown_temp_c"], s["cooldown_max_s"])
    key = session_key(path, runtime, s, inputs)
    entry = sessions.get(key)
    reused = entry is not None
    if reused:
        if entry.loaded.reapply is not None:
            entry.loaded.reapply()
    else:
        _import_runtime(runtime)  # once per agent: neither in this model's load time nor in its memory
        rss_reset, rss0 = peak_rss_reset(), _rss_mb()
        t_load = time.perf_counter()
        loaded = LOADERS[runtime](path, s, inputs)
        entry = Session(loaded, time.perf_counter() - t_load)
        gpu0 = loaded.gpu_mb() if loaded.gpu_mb is not None else 0.0
    loaded = entry.loaded
    applied = dict(loaded.applied, cores=_pin(s["cores"]))  # read back right before timing
    cuda = s["accelerator"] == "cuda"
    meter = EnergyMeter(s["accelerator"]) if s["energy"] else None
    if meter is not None:
        meter.idle()  # the session is loaded, warmup not started
    before = telemetry(cuda)
    started = time.time()
    try:
        timed = time_callable(loaded.sample, s, meter)
    except Exception as e:
        raise AgentError("runtime_error", "%s failed while running the model: %s" % (runtime, _first_line(str(e))))
    finished = time.time()
    throttle = throttle_state(applied["cores"] or [])
    after = telemetry(cuda)
    if not reused:
        # the CUDA path times its first eager forward itself
        entry.first_ms = loaded.first_ms if loaded.first_ms is not None else timed["first_ms"]
        other_rss, other_gpu = sessions.others_mb(key)
        peak = peak_rss_mb() if rss_reset else None
        entry.peak_rss_mb = None if peak is None else round(peak - other_rss, 1)  # as if alone in the agent
        entry.rss_mb = max(0.0, _rss_mb() - rss0)
        if loaded.gpu_mb is not None:
            entry.gpu_mb = max(0.0, loaded.gpu_mb() - gpu0)
            entry.gpu_peak_mb = round(loaded.gpu_peak_mb() - other_gpu, 1)
        sessions.put(key, entry, loaded.gpu_total_mb)
    timed.update(runtime_version=loaded.version, inputs=loaded.inputs, load_s=entry.load_s, applied=applied,
                 telemetry_before=before, telemetry_after=after, settings=s, agent_version=AGENT_VERSION,
                 started_at=_utc(started), finished_at=_utc(finished), cooldown_s=cooldown_s, cooled=cooled,
                 throttle=throttle, peak_rss_mb=entry.peak_rss_mb, launch_ms=loaded.launch_ms,
                 gpu_peak_mb=entry.gpu_peak_mb, first_ms=entry.first_ms, session_reused=reused,
                 **(meter.reply() if meter is not None else {}))
    return timed


# ---------------------------------------------------------------------------------------------
# The device lease


def default_lease_path():
    """One file per machine, whoever runs the agent and from whichever workdir (TMPDIR is honoured: Termux).
    LATKIT_LEASE in the agent's environment moves it (a test session isolating itself from other runs)."""
    return os.environ.get("LATKIT_LEASE") or os.path.join(tempfile.gettempdir(), "latkit-device.lease")


class Lease:
    """At most one measuring agent per device: an exclusive flock, which the kernel releases when the
    holder dies however it dies. The holder writes who it is into the file so a waiter can say so."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def _open(self):
        nofollow = getattr(os, "O_NOFOLLOW", 0)  # never truncate a file a planted symlink points to
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | nofollow, 0o666)
            if os.fstat(fd).st_uid == os.getuid():
                os.fchmod(fd, 0o666)  # other users of the device must be able to take it (and say who they are)
            return fd
        except PermissionError:  # another user's lease file: locking it needs no write access
            try:
                return os.open(self.path, os.O_RDONLY | nofollow)
            except OSError as e:
                error = e
        except OSError as e:  # no such folder, a read-only file system...
            error = e
        raise AgentError("lease_unavailable", "cannot open the device lease %s: %s; give the device another "
                         "lease path (latkit device add --lease)" % (self.path, error.strerror))

    def holder(self, fd):
        try:
            return json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self, who):
        if self.fd is not None:
            return {"acquired": True, "path": self.path}
        try:
            import fcntl
        except ImportError:
            raise AgentError("lease_unavailable", "this device has no fcntl (not a POSIX system)")
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            held = self.holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return {"acquired": False, "path": self.path, "holder": held}
            raise AgentError("lease_unavailable", "cannot lock %s: %s" % (self.path, e.strerror))
        info = dict(who or {}, agent_pid=os.getpid(), since=_utc(time.time()))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:
            pass  # a read-only lease file still locks; waiters just cannot see who holds it
        self.fd = fd
        return {"acquired": True, "path": self.path}


# ---------------------------------------------------------------------------------------------
# The request loop


def has(models, workdir):
    return {"present": [m for m in models if os.path.isfile(os.path.join(workdir, "models", m))]}


def _spec_ok(i):
    return (isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("dtype"), str)
            and isinstance(i.get("shape"), list) and all(_whole(d) and d >= 0 for d in i["shape"]))


_MEASURING = threading.Event()  # set while a measure request runs


def _measure_op(req, workdir, lease, sessions):
    if lease.fd is None:
        raise AgentError("bad_request", "measure needs the device lease: send {\"op\": \"lease\"} first")
    _MEASURING.set()
    try:
        return measure(req["model"], req["runtime"], req.get("settings"), workdir, req.get("inputs"), sessions)
    finally:
        _MEASURING.clear()


def _models_ok(v):
    return isinstance(v, list) and all(isinstance(m, str) for m in v)


def _inputs_ok(v):
    return v is None or (isinstance(v, list) and all(_spec_ok(i) for i in v))


# Every op the agent answers but shutdown (which ends serve): what it runs, as run(req, workdir, lease, sessions),
# and the fields it reads, name -> (check, what it must be). A request of another shape is a bad_request, never
# an exception deep inside an op.
Op = collections.namedtuple("Op", "run fields")
OPS = {
    "ping": Op(lambda req, workdir, lease, sessions: {"agent_version": AGENT_VERSION, "pid": os.getpid()}, {}),
    "probe": Op(lambda req, workdir, lease, sessions: probe(), {}),
    "health": Op(lambda req, workdir, lease, sessions: health(workdir), {}),
    "has": Op(lambda req, workdir, lease, sessions: has(req["models"], workdir),
              {"models": (_models_ok, "a list of model file names")}),
    "lease": Op(lambda req, workdir, lease, sessions: lease.acquire(req.get("holder")),
                {"holder": (lambda v: v is None or isinstance(v, dict), "an object saying who takes the lease")}),
    "measure": Op(_measure_op, {
        "model": (lambda v: isinstance(v, str), "a model file name"),
        "runtime": (lambda v: v in RUNTIMES, "one of " + ", ".join(RUNTIMES)),
        "settings": (lambda v: v is None or isinstance(v, dict), "an object of settings"),
        "inputs": (_inputs_ok, "a list of {name, shape, dtype} objects with whole-number shapes")}),
}


def handle(req, workdir, lease, sessions=None):
    op = req.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise AgentError("bad_request", "unknown op %s; known: %s"
                         % (json.dumps(op)[:80], ", ".join(list(OPS) + ["shutdown"])))
    for key, (ok, what) in OPS[op].fields.items():
        if not ok(req.get(key)):
            raise AgentError("bad_request", "%s: %s must be %s, got %s"
                             % (op, key, what, json.dumps(req.get(key))[:80]))
    return OPS[op].run(req, workdir, lease, sessions)


def _read_requests(inp, lines):
    """Feed request lines to the main loop. At EOF (the host is gone, or has nothing more to ask) the
    requests already read are answered, but a measurement still running EXIT_GRACE_S later is abandoned:
    nobody may be left to read it, and the device must not stay busy."""
    try:
        for line in inp:
            lines.put(line)
    except (OSError, ValueError):
        pass
    lines.put(None)
    deadline = time.time() + EXIT_GRACE_S
    while True:
        time.sleep(0.1)
        if _MEASURING.is_set() and time.time() > deadline:
            os._exit(0)


def _watch_parent(ppid):
    """Exit when re-parented: the process that started us (the host, or sshd's session) is gone."""
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid:
            os._exit(0)


def _reply(out, req_id, ok, body):
    out.write(FRAME + json.dumps({"id": req_id, "ok": ok, ("result" if ok else "error"): body}) + "\n")
    out.flush()


def serve(inp, out, workdir, lease=None, sessions=None):
    lease = lease or Lease(default_lease_path())
    sessions = sessions if sessions is not None else Sessions()
    lines = queue.Queue()
    threading.Thread(target=_read_requests, args=(inp, lines), daemon=True).start()
    while True:
        line = lines.get()
        if line is None:
            return
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object")
        except (ValueError, RecursionError) as e:  # RecursionError: nesting too deep for the parser
            _reply(out, None, False, {"kind": "bad_request", "message": "not a JSON request: %s" % e})
            continue
        req_id = req.get("id")
        if req.get("op") == "shutdown":
            _reply(out, req_id, True, {})
            return
        try:
            _reply(out, req_id, True, handle(req, workdir, lease, sessions))
        except AgentError as e:
            _reply(out, req_id, False, {"kind": e.kind, "message": e.message})
        except Exception as e:  # a bug here must not kill a long collection: report it as a value
            traceback.print_exc(file=sys.stderr)
            _reply(out, req_id, False, {"kind": "agent_error", "message": ("%s: %s" % (type(e).__name__, e))[:2000]})


def _die_with_parent(ppid):
    """Local agents: SIGKILL from the kernel the moment the host process dies (Linux prctl)."""
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != ppid:  # the parent died before the prctl
        os._exit(0)


def main(argv=None):
    parser = argparse.ArgumentParser(description="latkit device agent (JSON lines on stdin/stdout)")
    parser.add_argument("--workdir", default=os.path.expanduser("~/.latkit"),
                        help="folder holding models/ (default ~/.latkit)")
    parser.add_argument("--lease", default=None, help="device lease file (default %s)" % default_lease_path())
    parser.add_argument("--parent-pid", type=int, help="die with this process (the local host)")
    parser.add_argument("--max-sessions", type=int, default=int(os.environ.get("LATKIT_MAX_SESSIONS", 64)),
                        help="loaded models kept for later requests (default $LATKIT_MAX_SESSIONS or 64; "
                             "0 loads every request afresh)")
    parser.add_argument("--session-memory", type=float, default=0.25,
                        help="their memory bound, as a fraction of RAM (and of GPU memory) (default 0.25)")
    parser.add_argument("--version", action="store_true", help="print the agent version and exit")
    args = parser.parse_args(argv)
    if args.version:
        print(AGENT_VERSION)
        return 0
    if args.parent_pid and sys.platform.startswith("linux"):
        _die_with_parent(args.parent_pid)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    # Keep the protocol stream clean: replies go to a duplicate of fd 1, and fd 1 becomes stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.makedirs(os.path.join(args.workdir, "models"), exist_ok=True)
    # bytes, decoded per line with replacement: a line that is not UTF-8 is a bad request, not the end of stdin
    serve(sys.stdin.buffer, proto, args.workdir, Lease(args.lease or default_lease_path()),
          Sessions(max(0, args.max_sessions), args.session_memory))
    proto.flush()
    # the reader thread may still be blocked in stdin's buffered read, and interpreter shutdown aborts on its lock
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
