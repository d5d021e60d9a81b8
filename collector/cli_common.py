"""What the `latkit` command modules share: the parent parsers (-q/-v, --registry), the timing options and
the Settings they make, option choices read from the code's own tables, and JSON output.

Choices come from the registries, so a new sampler, runtime or model kind is offered without editing the
CLI: samplers from collector/samplers.py SAMPLERS, runtimes from collector/job.py. These lists stay here, checked
by tests/test_modules.py: MODEL_NAMES and GRAPH_MODEL_NAMES (predictor/models.py's MODELS, predictor/graphdata.py's
MODEL_KINDS; the CLI must not import predictor to parse arguments) and ACCELERATORS / DTYPES (Settings checks them
inline; no table to read).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from datetime import datetime
from typing import NamedTuple

from rich.console import Console

from . import validate
from .cliargs import Parser
from .job import NUMBER, RUNTIMES, WHOLE, Settings

console = Console(width=None if sys.stdout.isatty() else 140)
log = logging.getLogger("latkit")
SEED = validate.arg_whole(0, WHOLE["seed"][1])
MODEL_NAMES = ("ridge", "gbdt", "rf", "mlp", "gnn")  # predictor/models.py MODELS, in its order
GRAPH_SPACE = "onnx"  # `--space onnx`: models of any ONNX file, not of a search space's archs
GRAPH_MODEL_NAMES = ("kernels", "gnn", "flops")  # predictor/graphdata.py MODEL_KINDS, in its order
ACCELERATORS = ("cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")


class Parents(NamedTuple):
    """The parent parsers every leaf command takes: `common` (-q/-v), `registry` (common + --registry)."""
    common: Parser
    registry: Parser


def parents() -> Parents:
    common = Parser(add_help=False)
    talk = common.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true", help="debug lines on stderr (e.g. converter output)")
    talk.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr, only warnings and errors")
    registry = Parser(add_help=False, parents=[common])
    registry.add_argument("--registry",
                          help="devices file (default $LATKIT_REGISTRY or ~/.config/latkit/devices.toml)")
    return Parents(common, registry)


def default_first(names, default: str) -> list:
    """A registry's names with the option's default first, as --help lists them."""
    return [default, *(n for n in names if n != default)]


def whole_of(name: str, hi=None):
    """The argparse type of the Settings field `name` (its range from collector/job.py)."""
    lo, top = WHOLE[name]
    return validate.arg_whole(lo, hi or top)


def number_of(name: str):
    lo, hi, open_ = NUMBER[name]
    return validate.arg_number(lo, hi, open_, open_)


def jsonable(x):
    """Plain JSON values: datetimes as ISO text, NaN and infinities as null (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, datetime):
        return x.isoformat()
    return x


def print_json(doc) -> None:
    print(json.dumps(jsonable(doc), indent=2))


def settings_of_args(args) -> Settings:
    return Settings(threads=args.threads, cores=args.cores, batch_size=args.batch_size,
                    repeats_min_count=args.repeats, repeats_max_count=args.max_repeats, repeats_min_s=args.min_time,
                    repeats_max_s=args.max_time, ci_target=args.ci_target, accelerator=args.accelerator, dtype=args.dtype,
                    cuda_graphs=args.cuda_graphs, include_copies=args.include_copies, rounds=args.rounds,
                    cooldown_temp_c=args.cooldown_temp, cooldown_max_s=args.cooldown_max, energy=args.energy,
                    input_shapes=tuple(getattr(args, "input_shape", ())) or None)


def live_settings(args) -> Settings:
    return Settings(threads=args.threads, repeats_min_count=args.repeats, repeats_max_count=args.max_repeats,
                    repeats_min_s=args.min_time, repeats_max_s=args.max_time, rounds=args.rounds)


def timing_args(p: argparse.ArgumentParser) -> None:
    """The timing protocol options every measuring command takes (Settings fields, ranges from job.py)."""
    p.add_argument("--threads", type=whole_of("threads"), default=1, help="runtime threads (default 1; 1 to 256)")
    p.add_argument("--repeats", type=whole_of("repeats_min_count"), default=Settings.repeats_min_count,
                   help="minimum timed runs per round (1 to 1000000; at most --max-repeats)")
    p.add_argument("--max-repeats", type=whole_of("repeats_max_count"), default=Settings.repeats_max_count,
                   help="stop a round after this many timed runs, minimum time or not: the device never sends more "
                        "samples (default 10000; 1 to 10000000)")
    p.add_argument("--min-time", type=number_of("repeats_min_s"), default=Settings.repeats_min_s,
                   help="minimum timed seconds per round (0 to 3600)")
    p.add_argument("--max-time", type=number_of("repeats_max_s"), default=Settings.repeats_max_s,
                   help="stop a round after this many timed seconds once the minimums are met (0 to 3600)")
    p.add_argument("--rounds", type=whole_of("rounds"), help="shuffled rounds per model (default 4 on cpu, 1 on cuda)")


def protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=RUNTIMES, help="default: from each file's extension")
    timing_args(p)
    p.add_argument("--cores", type=validate.arg_cores, help="pin the agent to these CPU ids, e.g. 0 or 2,3")
    p.add_argument("--batch-size", type=whole_of("batch_size"),
                   help="batch size, 1 to 4096 (with --space: exported at it; else fills a dynamic batch)")
    p.add_argument("--ci-target", type=number_of("ci_target"), default=Settings.ci_target,
                   help="stop a round once the 95%% CI of latency_ms's quantile (p10 on a CPU, median on a GPU) is within +- this fraction (default 0.005; 0 < x < 1)")
    p.add_argument("--cooldown-temp", type=number_of("cooldown_temp_c"), metavar="C",
                   help="before each model wait until the device's hottest sensor reads <= C degrees")
    p.add_argument("--cooldown-max", type=number_of("cooldown_max_s"), default=Settings.cooldown_max_s, metavar="S",
                   help="wait at most S seconds for --cooldown-temp (default 300)")
    p.add_argument("--input-shape", action="append", type=validate.arg_shape, metavar="1x3x224x224", default=[],
                   help="an input of TorchScript (.pt) files, which declare none (float32; once per input, in order; "
                        "part of the key)")
    p.add_argument("--energy", action="store_true",
                   help="also energy per inference: RAPL on a CPU, NVML on cuda (costs an idle span and >= 0.2 s / "
                        "1 s of runs per round; README \"Energy\")")
    p.add_argument("--no-wait", action="store_true", help="fail at once if another collection holds the device")
    p.add_argument("--accelerator", default="cpu", choices=list(ACCELERATORS),
                   help="cuda: torch on the GPU timed with CUDA events, or onnxruntime's CUDA EP")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="torch on cuda")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="torch on cuda: replay the forward as a CUDA graph (default on; --no-cuda-graphs times eager)")
    p.add_argument("--include-copies", action="store_true",
                   help="torch on cuda: time host->device input and device->host output copies too")
    p.add_argument("--out", default="latkit-data", help="dataset directory or URI (default ./latkit-data)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")


def live_args(p: argparse.ArgumentParser) -> None:
    """Where and how a live predictor command measures."""
    p.add_argument("--data", default="latkit-data", help="dataset the measurements go to and resume from")
    timing_args(p)
