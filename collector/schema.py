"""The row schema, declared once: the Parquet schema, the dataset card's column table and `latkit data schema`
all come from COLUMNS. One row per (model, device, runtime, settings) measurement."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow as pa

from .measurement import CONTENDED, TELEMETRY

_TS = pa.timestamp("us", tz="UTC")
_STR, _I64, _F64, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
# The partition columns, plain strings in every file, and the folder keys that partition the rows by them:
# data/device_=<d>/space_=<s>/. The keys differ from the column names on purpose: a Hive reader adds each folder key
# as a column of the type it infers (a string in pyarrow.dataset, DuckDB and polars; a dictionary in
# pyarrow.parquet.read_table and so pandas), and under a file column's own name the two types clash (with
# `device=` folders, read_table and pandas failed without `partitioning=None`). Hugging Face `datasets` ignores
# folder names, so the columns must be in the files. Older datasets (`device=` folders, dictionary-encoded
# columns, fewer columns): `latkit data migrate` moves and rewrites them.
PARTITIONS = ("device", "space")
FOLDER_KEYS = ("device_", "space_")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    unit: str
    description: str

    def as_dict(self) -> dict:
        return dict(asdict(self), type=str(self.type))


_TELEMETRY_UNITS = {"freq_mhz": ("MHz", "CPU frequency"), "temp_c": ("°C", "hottest sensor"),
                    "load1": ("", "1-min load average"), "gpu_sm_mhz": ("MHz", "GPU SM clock"),
                    "gpu_mem_mhz": ("MHz", "GPU memory clock"), "gpu_temp_c": ("°C", "GPU temperature"),
                    "gpu_power_w": ("W", "GPU power draw")}
_STATS = [("median_ms", "median of all samples_ms"), ("mean_ms", "mean of all samples_ms"),
          ("std_ms", "standard deviation (ddof=1) of all samples_ms"), ("min_ms", "fastest sample"),
          ("max_ms", "slowest sample"), ("p10_ms", "10th percentile of samples_ms"),
          ("p90_ms", "90th percentile of samples_ms"), ("p99_ms", "99th percentile of samples_ms"),
          ("iqr_ms", "interquartile range of samples_ms"),
          ("mode_ms", "midpoint of the shortest interval holding half the samples")]

COLUMNS: tuple = tuple([
    Column("space", _STR, "", "search space; \"custom\" for user models"),
    Column("arch", _STR, "", "arch string (file name for user models)"),
    Column("model_sha256", _STR, "", "content hash of the timed file"),
    Column("model_format", _STR, "", "onnx, tflite, pt2, torchscript"),
    Column("device", _STR, "", "registry name of the device"),
    Column("device_fingerprint", _STR, "", "hash of hardware, kernel and runtime versions at the time"),
    Column("runtime", _STR, "", "onnxruntime, tflite, torch (\"published\" for imported tables)"),
    Column("runtime_version", _STR, "", "version of the runtime"),
    Column("accelerator", _STR, "", "cpu or cuda"),
    Column("batch_size", _I64, "", "first dimension of the first input"),
    Column("input_shape", _STR, "", "shapes of all inputs, e.g. \"1x3x32x32\" (\";\" between inputs)"),
    Column("threads", _I64, "", "runtime threads the key asked for"),
    Column("cores", _STR, "", "pinned CPU ids the key asked for (\"\" = not pinned)"),
    Column("threads_applied", _I64, "", "the runtime's thread count read back right before timing (tflite: as built)"),
    Column("cores_applied", _STR, "", "os.sched_getaffinity read back right before timing"),
    Column("dtype", _STR, "", "GPU rows: parameter dtype on the device"),
    Column("cuda_graphs", _BOOL, "", "GPU rows: whether a CUDA graph was replayed"),
    Column("graph_fallback", _STR, "", "GPU rows: why CUDA-graph capture fell back to eager"),
    Column("cudnn_benchmark", _BOOL, "", "GPU rows: cuDNN benchmark mode (latkit turns it off)"),
    Column("tf32", _BOOL, "", "GPU rows: TF32 allowed in matmul or cuDNN"),
    Column("launch_ms", _F64, "ms", "GPU rows: host time to enqueue one eager forward"),
    Column("launch_bound", _BOOL, "", "an eager row whose launch_ms >= 0.8 x latency (it timed the host)"),
    Column("settings", _STR, "", "canonical JSON of Settings"),
    Column("key", _STR, "", "sha256(model, device, settings): a row is exactly-once per key; resume skips done keys"),
    Column("sampler", _STR, "", "how the arch was chosen, e.g. \"balanced(seed=0)\"; \"\" for single models; "
                                "predictor build: uniform (held-out), balanced (round 0), weak-spots (later rounds); "
                                "predictor adapt: diverse-bank (k-means over the source bank). Rows of latkit before "
                                "the role column: \"build(heldout)\", \"build(round=N)\", \"adapt\", \"retest\""),
    Column("role", _STR, "", "what the row is for: \"\" data; \"heldout\" / \"round\" predictor build's held-out "
                             "and training archs; \"adapt\" predictor adapt's; \"retest\" measured again into a "
                             "retest side table; \"reference\" the reference network's A/A checks, in the reference "
                             "side table _reference/ (never among the data). Null in rows of latkit before it (their "
                             "sampler says it)"),
    Column("role_round", _I64, "", "the build round that measured a \"round\" row (0 = the first); null otherwise"),
    Column("latency_ms", _F64, "ms", "the headline; latency_statistic says which statistic of the samples it is"),
    Column("latency_statistic", _STR, "", "p10 on a CPU (the 10th percentile of all samples: a low quantile repeats "
                                          "best on a busy host); on a GPU median, or min_round_median (the fastest "
                                          "round's median) with rounds > 1; chosen on test-retest data "
                                          "(collector/measurement.py LATENCY_STATISTIC). Null in rows of agent 0.2: "
                                          "there the median for one round, else the minimum of the round medians"),
    *[Column(n, _F64, "ms", d) for n, d in _STATS],
    Column("cv", _F64, "", "std / mean"),
    Column("robust_cv", _F64, "", "IQR / 1.349 / median"),
    Column("rounds", _I64, "", "shuffled rounds this job was timed in"),
    Column("round_ms", pa.list_(_F64), "ms", "each round's median"),
    Column("round_started_at", pa.list_(_TS), "UTC", "device clock at the start of each round's warmup"),
    Column("round_finished_at", pa.list_(_TS), "UTC", "device clock after each round's last timed run"),
    Column("started_at", _TS, "UTC", "the first round's start; no two rows of one device overlap"),
    Column("finished_at", _TS, "UTC", "the last round's end"),
    Column("stopped_by", _STR, "", "why timing stopped: ci_target, max_time, max_count (with rounds: the first cap "
                               "any round hit)"),
    Column("ci_rel", _F64, "", "the 95 % CI half-width of latency_ms's quantile (p10 on a CPU, median on a GPU; "
                               "agent < 0.3.1: the median) / that quantile when timing stopped (worst round)"),
    Column("repeats", _I64, "", "timed runs kept"),
    Column("warmup", _I64, "", "untimed warmup runs before them"),
    Column("samples_ms", pa.list_(pa.float32()), "ms", "every timed run, in order (rounds one after the other); "
                                                   "float32 (7 significant digits), statistics from float64"),
    Column("cpu_samples_ms", pa.list_(pa.float32()), "ms",
           "the calling thread's CPU time (thread_time_ns) of each timed run, beside samples_ms in the same order: "
           "with one thread the runtime computes in that thread, so it counts the model's own work, not the slices "
           "the host gave to other processes. CPU rows with threads=1 of agent >= 0.3.6; null otherwise (with more "
           "threads the pool's work is not in that clock)"),
    Column("cpu_ms", _F64, "ms", "p10 of cpu_samples_ms (latency_ms's statistic on a CPU): the latency without the "
                                 "host's other work, for data collected on shared or loaded hosts (on a quiet host ~ "
                                 "latency_ms); still counts cache and memory interference from other cores"),
    Column("contention", _F64, "", "latency_ms / cpu_ms - 1: the share of wall time the host took away (above "
                                   f"{CONTENDED:g} the row warns \"contended\"); null where cpu_ms is"),
    Column("load_ms", _F64, "ms", "model load and session set-up, of the session's fresh load (which may have been "
                                  "an earlier request's: session_reused)"),
    Column("first_ms", _F64, "ms", "the first inference after that load (GPU: first eager forward)"),
    Column("session_reused", _BOOL, "", "the first round ran on a session the agent kept from an earlier request"),
    Column("round_session_reused", pa.list_(_BOOL), "", "the same, per round"),
    Column("peak_rss_mb", _F64, "MB", "the agent's peak resident memory while loading and first timing the session "
                                      "(VmHWM, reset per load), less what the other kept sessions hold"),
    Column("gpu_peak_mb", _F64, "MB", "torch.cuda peak allocation, likewise"),
    Column("energy_mj", _F64, "mJ", "energy per inference (--energy): the counter's energy over the timed runs "
                                    "/ energy_runs; RAPL is package-wide (other processes count too); null when "
                                    "not asked for, or unreadable (warnings says why)"),
    Column("power_w", _F64, "W", "average power over that span (energy / energy_s), idle_power_w included"),
    Column("idle_power_w", _F64, "W", "the counter's power over an idle span before warmup (0.2 s RAPL, 0.5 s NVML): "
                                      "stored beside power_w, not subtracted"),
    Column("energy_s", _F64, "s", "seconds the counter was read over: the timed runs, extended with more runs to "
                                  ">= 0.2 s (RAPL) / 1 s (NVML, which updates every 20-100 ms), summed over rounds"),
    Column("energy_runs", _I64, "", "model runs in that span (timed runs and the runs that extended it)"),
    Column("energy_method", _STR, "", "rapl (Linux powercap, CPU package domains) or nvml (the GPU's total-energy "
                                      "counter); null when energy was not read"),
    Column("cooldown_s", _F64, "s", "seconds waited for --cooldown-temp"),
    Column("throttle", _STR, "", "why the device ran below rated speed (\"\" = nothing seen, null = cannot tell)"),
    Column("warnings", _STR, "", "\"; \"-joined: noisy, missed CI target, throttled, launch-bound, CUDA-graph fallback, "
                                 "contended, why energy asked for is null (\"energy: ...\", last)"),
    *[Column(f"telemetry_{when}_{k}", _F64, _TELEMETRY_UNITS[k][0], f"{_TELEMETRY_UNITS[k][1]} {when} timing")
      for when in ("before", "after") for k in TELEMETRY],
    Column("gpu_clocks_locked", _BOOL, "", "application clocks differ from the defaults (nvidia-smi -ac); null = unknown"),
    Column("agent_version", _STR, "", "version of agents/agent.py that timed it"),
    Column("measured_at", _TS, "UTC", "when the host received the result"),
    Column("status", _STR, "", "\"ok\" or \"error\""),
    Column("error_kind", _STR, "", "error kind (collector/measurement.py ERROR_KINDS)"),
    Column("error", _STR, "", "one-line error message"),
])

# The values of the role column: a row's part in the pipeline that measured it, apart from how its arch was
# chosen (sampler), so that a pipeline finds its own rows without parsing sampler strings.
ROLES = ("", "heldout", "round", "adapt", "retest", "reference")
_LEGACY_ROLES = {"build(heldout)": "heldout", "adapt": "adapt", "retest": "retest"}


def role_of(row: dict) -> tuple:
    """(role, role_round) of a row; rows of latkit before the role column (role null) kept it in sampler,
    "build(round=N)" and the like, which datasets written then still hold."""
    if row.get("role") is not None:
        return row["role"], row.get("role_round")
    sampler = row.get("sampler") or ""
    if sampler.startswith("build(round=") and sampler.endswith(")") and sampler[12:-1].isdigit():
        return "round", int(sampler[12:-1])
    return _LEGACY_ROLES.get(sampler, ""), None


# The schema of rows in latkit's API and of every Parquet file (all columns, in this order).
SCHEMA = pa.schema([(c.name, c.type) for c in COLUMNS])
FILE_SCHEMA = SCHEMA


def current(schema: pa.Schema) -> bool:
    """Whether a file's schema is the current one (else `latkit data migrate` rewrites the file)."""
    return schema.remove_metadata().equals(FILE_SCHEMA)


def markdown() -> list:
    """The column table of a dataset card, as Markdown lines."""
    return ["| column | type | unit | meaning |", "|---|---|---|---|"] + [
        f"| {c.name} | {c.type} | {c.unit} | {c.description.replace('|', '/')} |" for c in COLUMNS]


def conform(t: pa.Table) -> pa.Table:
    """Rows in the file schema: a column an older latkit did not write (a file from before it existed) is
    added as nulls, so a compacted file holds the full schema whatever it merged."""
    if t.schema.equals(FILE_SCHEMA):
        return t
    return pa.table([t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
                     for f in FILE_SCHEMA], schema=FILE_SCHEMA)
