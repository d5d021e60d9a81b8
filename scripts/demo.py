"""latkit's story on this machine, in a few minutes:
0. check the machine before timing on it (latkit doctor);
1. time three hand-written networks on `local` with ONNX Runtime and TFLite;
2. collect a small NB201 latency dataset on `local` (balanced sampler);
3. fit an ESM-style surrogate on part of it, show its accuracy on the archs it never saw, save it and predict
   with it through the CLI (latency and its standard deviation).
Every row is kept in ./latkit-data (Parquet); re-running resumes instead of measuring again."""
from __future__ import annotations

import argparse
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from latkit.collector import Settings, cli, export, measure_many, probe
from latkit.collector.api import collect_space
from latkit.predictor.esm import fit

nn = torch.nn


def inverted_residual(cin, cout, stride, expand):
    mid = cin * expand
    return nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                         nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                         nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def models():
    """(name, module, input) for three small but real network families, with the same weights on every run: the
    same files, so a second run finds them measured."""
    torch.manual_seed(0)
    mobile = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6(), inverted_residual(16, 24, 2, 6),
                           inverted_residual(24, 32, 2, 6), inverted_residual(32, 64, 2, 4),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1000))
    resnet = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), Residual(32), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                           Residual(64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    mlp = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    return [("mobilenet_ish_128", mobile, torch.randn(1, 3, 128, 128)),
            ("resnet_ish_32", resnet, torch.randn(1, 3, 32, 32)),
            ("mlp_784", mlp, torch.randn(1, 784))]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="latkit-data")
    ap.add_argument("--n", type=int, default=60, help="NB201 archs to collect")
    args = ap.parse_args()
    if args.n < 30:
        ap.error("--n must be >= 30: the surrogate is tested on archs it never saw (20 at least)")
    console = Console(width=None if sys.stdout.isatty() else 120)
    p = probe("local")
    cli.main(["doctor", "--devices", "local"])  # what would spoil timing here: governor, load, busy cores, disk
    console.print(f"[bold]device local[/]: {p['cpu_model']}, {p['cpu_count']} CPUs, {p['memory_mb']} MB, "
                  f"runtimes " + ", ".join(f"{k} {v['version']}" for k, v in p["runtimes"].items()))
    settings = Settings()  # the default protocol: 4 shuffled rounds, each stopped by the p10's CI or 0.3 s
    table = Table("model", "runtime", "latency_ms", "p10-p90 ms", "robust CV", "repeats", "stopped by", "status")
    t0 = time.time()
    for fmt, runtime in (("onnx", "onnxruntime"), ("tflite", "tflite")):
        arts = [export(m.eval(), (x,), fmt, arch=name) for name, m, x in models()]
        for m in measure_many(arts, "local", runtime, settings, out=args.out):
            s = m.stats
            if m.status == "ok":
                table.add_row(m.job.artifact.arch, runtime, f"{s.latency_ms:.3f}", f"{s.p10_ms:.3f}-{s.p90_ms:.3f}",
                              f"{s.robust_cv * 100:.1f}%", str(s.repeats), m.stopped_by,
                              "ok" + (f" ({len(m.warnings)} warnings)" if m.warnings else ""))
            else:
                table.add_row(m.job.artifact.arch, runtime, "-", "-", "-", "-", "-", f"{m.error_kind}: {m.error}")
    console.print(table)

    console.print(f"\n[bold]collecting {args.n} NB201 archs[/] (balanced over FLOPs) on local with onnxruntime")
    report = collect_space("nb201", args.n, ["local"], "onnxruntime", "balanced", 0, Settings(), args.out,
                           progress=True)
    d = report.devices[0]
    console.print(f"{d.measured} measured, {d.skipped} already in the dataset, status {d.status}")
    budget = max(10, int(args.n * 2 / 3))
    surrogate, r, test = fit(args.out, "nb201", "local", budget=budget)
    console.print(f"\n[bold]surrogate[/] ({r['model']}, trained on {r['n_train']} archs, tested on the other {r['n_test']}): "
                  f"Spearman {r['spearman']:.3f}, Kendall {r['kendall']:.3f}, MAPE {r['mape']:.1f} %, "
                  f"within ±10 %: {r['acc10'] * 100:.0f} %")
    saved = f"{args.out}/models/nb201-local.latkit-model"
    surrogate.save(saved)
    console.print(f"saved {saved}; an arch it never saw, through the CLI:")
    cli.main(["predictor", "predict", "--model", saved, "--space", "nb201", "--arch", test[0], "--std"])
    console.print(f"{time.time() - t0:.0f} s; rows kept in [bold]{args.out}/data[/] (Parquet, read it with pyarrow, "
                  f"polars or DuckDB; columns: latkit data schema). Next: latkit data show {args.out}; "
                  f"latkit predictor build --space nb201 --device local --out nb201-local.latkit-model (measure "
                  f"until the surrogate is accurate); latkit predictor adapt --device local --space nb201 --n 20 "
                  f"(few-shot from the HELP devices)")
    return cli.main(["data", "show", args.out])


if __name__ == "__main__":
    sys.exit(main())
