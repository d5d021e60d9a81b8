"""The Parquet store: an append-only, Hive-partitioned dataset (device=.../space=.../part-<uuid>.parquet).

Rows are never rewritten. Each append writes a new file under a dot-prefixed temporary name (which
readers ignore) and renames it into place, so a crash leaves either the whole file or none of it.
Any pyarrow filesystem URI works (a local path, file://, s3://, gs://, hdfs://); on object stores the
final move is the store's copy-then-delete, still never visible half-written.

Columns (one row per (model, device, runtime, settings) measurement):

| column | type | meaning |
|---|---|---|
| space, arch | string | search space ("custom" for user models) and arch string (file name for user models) |
| model_sha256, model_format | string | content hash of the timed file; onnx, tflite, pt2, torchscript |
| device, device_fingerprint | string | registry name; hash of hardware, kernel and runtime versions at the time |
| runtime, runtime_version, accelerator | string | onnxruntime / tflite / torch, its version, cpu / cuda |
| batch_size | int64 | first dimension of the first input |
| input_shape | string | shapes of all inputs, e.g. "1x3x32x32" (";" between inputs) |
| threads, cores | int64, string | runtime threads and pinned CPU ids ("" = not pinned) as the key asked for them |
| threads_applied, cores_applied | int64, string | what the agent read back right before timing: the runtime's thread count (tflite has no getter: as built) and os.sched_getaffinity |
| dtype, cuda_graphs, graph_fallback | string, bool, string | GPU rows: parameter dtype on the device; whether a CUDA graph was replayed; why capture fell back to eager |
| cudnn_benchmark, tf32 | bool | GPU rows: cuDNN benchmark mode (latkit turns it off); TF32 allowed in matmul or cuDNN |
| launch_ms, launch_bound | double, bool | GPU rows: host time to enqueue one eager forward; an eager row whose launch_ms >= 0.8 x latency (it timed the host) |
| settings, key | string | canonical JSON of Settings; sha256(model, device, settings) used to skip work done |
| sampler | string | how the arch was chosen, e.g. "balanced(seed=0)"; "" for single models |
| latency_ms, latency_statistic | double, string | the headline, and which statistic it is (collector/measurement.py LATENCY_STATISTIC, chosen on test-retest data per device class): on a CPU `p10`, the 10th percentile of all samples (a low quantile repeats best on a busy host); on a GPU `median`, or `min_round_median` (the fastest round's median) with rounds > 1. Null in rows of latkit before 0.3 (agent 0.2): there the median for one round, else the minimum of the round medians |
| median_ms, mean_ms, std_ms, min_ms, max_ms, p10_ms, p90_ms, p99_ms, iqr_ms | double | statistics of all samples_ms |
| mode_ms | double | midpoint of the shortest interval holding half the samples |
| cv, robust_cv | double | std/mean; IQR/1.349/median |
| rounds, round_ms | int64, list<double> | shuffled rounds this job was timed in; each round's median |
| round_started_at, round_finished_at, started_at, finished_at | timestamp[us, UTC] (lists per round) | device clock at the start of warmup and after the last timed run, per round; the first start and last end. No two rows of one device overlap |
| stopped_by, ci_rel | string, double | why timing stopped (ci_target, max_time, max_count; with rounds the first cap any round hit); the median's 95 % CI half-width / median then (worst round) |
| repeats, warmup | int64 | timed runs kept; untimed warmup runs before them |
| samples_ms | list<double> | every timed run, in order (rounds one after the other) |
| load_ms, first_ms | double | model load and session set-up; the first inference after it (GPU: first eager forward). Always those of the session's fresh load, which may have been an earlier request's (session_reused) |
| session_reused, round_session_reused | bool, list<bool> | the first round, and each round, ran on a session the agent had already loaded for an earlier request (agents keep sessions, LRU); true: load_ms/first_ms were measured then, not in this row |
| peak_rss_mb, gpu_peak_mb | double | the agent's peak resident memory while loading and first timing the session (Linux VmHWM, reset per load), less what the other sessions it keeps hold; torch.cuda peak allocation, likewise |
| cooldown_s, throttle | double, string | seconds waited for --cooldown-temp; why the device ran below rated speed ("" = nothing seen, null = cannot tell) |
| warnings | string | "; "-joined: noisy, missed CI target, throttled, launch-bound, CUDA-graph fallback |
| telemetry_{before,after}_{freq_mhz,temp_c,load1} | double | CPU frequency, hottest sensor, 1-min load |
| telemetry_{before,after}_gpu_{sm_mhz,mem_mhz,temp_c,power_w} | double | GPU clocks, temperature, power (cuda rows) |
| gpu_clocks_locked | bool | application clocks differ from the defaults (set with nvidia-smi -ac); null = unknown |
| agent_version | string | version of agents/agent.py that timed it |
| measured_at | timestamp[us, UTC] | when the host received the result |
| status, error_kind, error | string | "ok" or "error"; error kind (collector/measurement.py ERROR_KINDS) and one-line message |
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import validate
from .errors import LatkitError
from .measurement import PERMANENT_ERRORS, TELEMETRY

_STATS = ["latency_ms", "median_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "p10_ms", "p90_ms", "p99_ms", "iqr_ms",
          "mode_ms", "cv", "robust_cv"]
_TELEMETRY = [f"telemetry_{w}_{k}" for w in ("before", "after") for k in TELEMETRY]
_TS = pa.timestamp("us", tz="UTC")

SCHEMA = pa.schema(
    [(n, pa.string()) for n in ("space", "arch", "model_sha256", "model_format", "device", "device_fingerprint",
                                "runtime", "runtime_version", "accelerator")]
    + [("batch_size", pa.int64()), ("input_shape", pa.string()), ("threads", pa.int64()), ("cores", pa.string()),
       ("threads_applied", pa.int64()), ("cores_applied", pa.string()), ("dtype", pa.string()),
       ("cuda_graphs", pa.bool_()), ("graph_fallback", pa.string()), ("cudnn_benchmark", pa.bool_()),
       ("tf32", pa.bool_()), ("launch_ms", pa.float64()), ("launch_bound", pa.bool_()),
       ("settings", pa.string()), ("key", pa.string()), ("sampler", pa.string())]
    + [(n, pa.float64()) for n in _STATS] + [("latency_statistic", pa.string())]
    + [("rounds", pa.int64()), ("round_ms", pa.list_(pa.float64())), ("round_started_at", pa.list_(_TS)),
       ("round_finished_at", pa.list_(_TS)), ("started_at", _TS), ("finished_at", _TS),
       ("stopped_by", pa.string()), ("ci_rel", pa.float64()),
       ("repeats", pa.int64()), ("warmup", pa.int64()), ("samples_ms", pa.list_(pa.float64())),
       ("load_ms", pa.float64()), ("first_ms", pa.float64()), ("session_reused", pa.bool_()),
       ("round_session_reused", pa.list_(pa.bool_())), ("peak_rss_mb", pa.float64()),
       ("gpu_peak_mb", pa.float64()), ("cooldown_s", pa.float64()), ("throttle", pa.string()),
       ("warnings", pa.string())]
    + [(n, pa.float64()) for n in _TELEMETRY] + [("gpu_clocks_locked", pa.bool_())]
    + [("agent_version", pa.string()), ("measured_at", _TS),
       ("status", pa.string()), ("error_kind", pa.string()), ("error", pa.string())]
)
PARTITIONS = ("device", "space")


def _castable(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column read as `have` can stand for latkit's `want` (a null column always can)."""
    if have == want or pa.types.is_null(have):
        return True
    try:
        pa.array([], type=have).cast(want)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
_PARTITIONING = ds.partitioning(pa.schema([(p, pa.string()) for p in PARTITIONS]), flavor="hive")
_FILE_SCHEMA = pa.schema([f for f in SCHEMA if f.name not in PARTITIONS])


class Store:
    """Append rows, read them back, and tell which job keys are already measured."""

    def __init__(self, uri: str | os.PathLike = "latkit-data"):
        self.uri = str(uri)
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowInvalid, ValueError):  # a plain relative path
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(self.uri).absolute())
        except OSError as e:  # s3://no-such-bucket, an unreachable endpoint, missing credentials
            raise LatkitError(f"cannot open dataset {self.uri}: {str(e).splitlines()[0]}; check the URI, the "
                              "network and the credentials") from None
        self._lock = threading.Lock()

    def check_writable(self, min_free_mb: int = 64) -> None:
        """Fail before any device time is spent if rows could not be kept (unwritable, or a full local disk)."""
        probe = f"{self.root}/.latkit-write-test-{uuid.uuid4().hex}"
        try:
            self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as e:
            reason = e.strerror if getattr(e, "strerror", None) else str(e).splitlines()[0]
            raise LatkitError(f"cannot write to {self.uri}: {reason}; choose another --out") from None
        if isinstance(self.fs, pafs.LocalFileSystem):
            free_mb = shutil.disk_usage(self.root).free // 2 ** 20
            if free_mb < min_free_mb:
                raise LatkitError(f"only {free_mb} MiB free at {self.uri}; free some space or choose another --out")

    def append(self, rows: Iterable[dict]) -> int:
        """Write rows as new files, one per partition; returns the number written."""
        rows = list(rows)
        for row in rows:  # from_pylist drops unknown keys silently: a typo would become a null column
            extra = set(row) - set(SCHEMA.names)
            if extra:
                raise ValueError(f"row keys not in the schema: {sorted(extra)}")
            for part in PARTITIONS:  # they become folder names
                validate.name(row.get(part), part)
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        if table.num_rows == 0:
            return 0
        groups = {}
        for i, (dev, space) in enumerate(zip(table["device"].to_pylist(), table["space"].to_pylist())):
            groups.setdefault((dev, space), []).append(i)
        for (dev, space), idx in groups.items():
            folder = f"{self.root}/device={dev}/space={space}"
            name = f"part-{uuid.uuid4().hex}.parquet"
            tmp, final = f"{folder}/.{name}.tmp", f"{folder}/{name}"
            self.fs.create_dir(folder, recursive=True)
            part = table.take(idx).select(_FILE_SCHEMA.names)
            with self.fs.open_output_stream(tmp) as out:
                pq.write_table(part, out, compression="zstd")
            self.fs.move(tmp, final)
        return table.num_rows

    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    def files(self) -> list:
        """The dataset's Parquet files; anything else in the folder (README.md card, plots/, _devices.json,
        side tables under _retest/, dot-prefixed temporaries) is not data."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        root = self.root.rstrip("/") + "/"
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                      and not any(p.startswith((".", "_")) for p in i.path[len(root):].split("/")))

    def dataset(self) -> ds.Dataset:
        return ds.dataset(self.files(), filesystem=self.fs, format="parquet", partitioning=_PARTITIONING,
                          partition_base_dir=self.root, schema=SCHEMA)

    def read(self, columns=None, filter=None) -> pa.Table:
        """The rows (optionally some columns, filtered). A file in the folder that latkit did not write (not
        Parquet, other columns or types, no status) is named in a LatkitError instead of read as nonsense."""
        if not self.exists():
            return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
        cols = None if columns is None else list(dict.fromkeys([*columns, "status"]))
        # rows with no status (a foreign file) are read whatever the filter, to be caught below
        wanted = None if filter is None else filter | pc.field("status").is_null()
        try:
            t = self.dataset().to_table(columns=cols, filter=wanted)
        except (pa.ArrowException, OSError):
            raise self._foreign() from None
        if t["status"].null_count:
            raise self._foreign()
        return t if columns is None else t.select(columns)

    def _foreign(self) -> LatkitError:
        """An error naming the first data file latkit did not write (the slow path, after a read failed)."""
        for path in self.files():
            try:
                with self.fs.open_input_file(path) as f:
                    schema = pq.read_schema(f)
            except (pa.ArrowException, OSError) as e:
                why = f"not a Parquet file ({str(e).splitlines()[0]})"
            else:
                missing = {"status", "key"} - set(schema.names)
                clash = [n for n in schema.names if n in _FILE_SCHEMA.names
                         and not _castable(schema.field(n).type, _FILE_SCHEMA.field(n).type)]
                if not missing and not clash:
                    continue
                why = f"no {' and no '.join(sorted(missing))} column" if missing else \
                    f"column {clash[0]} is {schema.field(clash[0]).type}, not {_FILE_SCHEMA.field(clash[0]).type}"
            return LatkitError(f"{path} is not latkit data ({why}); move it out of the dataset {self.uri}")
        return LatkitError(f"dataset {self.uri} cannot be read; check that its files were written by latkit")

    def record_devices(self, probes: dict) -> None:
        """Keep each device's probe beside the rows (`_devices.json`, keyed by fingerprint; readers skip
        names starting with '_'), so dataset cards can name the hardware behind a fingerprint."""
        with self._lock:
            known = self.devices()
            known.update(probes)
            tmp = f"{self.root}/._devices.json.tmp"
            with self.fs.open_output_stream(tmp) as f:
                f.write(json.dumps(known, indent=1, sort_keys=True).encode())
            self.fs.move(tmp, f"{self.root}/_devices.json")

    def devices(self) -> dict:
        path = f"{self.root}/_devices.json"
        try:
            with self.fs.open_input_stream(path) as f:
                known = json.loads(f.read())
        except (FileNotFoundError, OSError):
            return {}
        except ValueError as e:
            raise LatkitError(f"{path} is not valid JSON ({e}); remove it (it only names the hardware behind "
                              "each fingerprint; the next collection writes it again)") from None
        if not isinstance(known, dict) or not all(isinstance(p, dict) for p in known.values()):
            raise LatkitError(f"{path} is not a table of device probes; remove it (the next collection writes it "
                              "again)")
        return known

    def done_keys(self, include_errors: bool = True) -> set:
        """Keys a re-run skips: measured ok, and (by default) failed for a reason that would only fail
        again under the same key (corrupt file, unsupported op, timeout: PERMANENT_ERRORS)."""
        done = pc.field("status") == "ok"
        if include_errors:
            done = done | pc.field("error_kind").isin(sorted(PERMANENT_ERRORS))
        return set(self.read(columns=["key"], filter=done)["key"].to_pylist())
