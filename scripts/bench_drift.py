"""How the host moves between passes minutes apart, and what the reference network sees of it.

scripts/bench_models.py compares two passes; this one looks at why they differ. It times the model zoo (or
`--models` files) in `--passes` passes of `collect` on `local` at the default settings, the reference checked
every `--every` seconds (a b b a), a few zoo networks with an A/A twin, and `--candidate FILE` networks (with a
twin each) among the files, so that a network proposed as a reference is timed like the data. It reports:
- per pass: its level (the median over models of log(latency_ms / the model's geometric mean over the passes)),
  the reference's level (the median of its checks) and its drift within the run, and whether it warned;
- per model: its level in each pass and the correlation with the passes' levels (networks that move with the
  host have ~1, networks that only jitter ~0);
- per pair of passes: the median |difference|, the median once the pair's shift is divided out, the A/A median
  of the twins, and how far the reference moved;
- per network with a twin: how far its level spreads between passes (the sd over passes of the pair's mean) beside
  how far the twins differ within one (the sd of that mean's own noise), and the lag-1 correlation of the passes'
  levels (passes that follow each other alike: a host that moves slowly). `--aslr alternate` runs every other
  pass's agent with address-space randomisation off (Linux personality, inherited at exec) and reports the spreads
  for each half: whether where the process's memory lands, rather than the host, moves the networks.
Figures go to `--json` (the README's "Real networks" quotes them).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from latkit.collector import Artifact, Settings
from latkit.collector.retest import compare

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bench  # noqa: E402  (scripts/ is no package)


def mobile_candidate(folder: Path) -> Path:
    """The network tried as the reference (README "Real networks"): a dense 3x3 convolution 8->16 at 112x112, two
    inverted residual blocks (1x1 16->96, depthwise 3x3, 1x1 96->16, the input added back), pool, 16x10; its
    expanded activations (4.8 MB) overflow a core's L2 cache. Exported to ONNX by latkit's exporter."""
    import torch
    from latkit.collector import export

    class Block(torch.nn.Module):
        def __init__(self, c: int, wide: int):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(c, wide, 1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(wide, wide, 3, padding=1, groups=wide), torch.nn.ReLU(),
                                            torch.nn.Conv2d(wide, c, 1))

        def forward(self, x):
            return x + self.body(x)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), Block(16, 96), Block(16, 96),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    art = export(net, (torch.zeros(1, 8, 112, 112),), "onnx", arch="mobile", cache_dir=folder)
    return art.path


ADDR_NO_RANDOMIZE = 0x0040000  # linux/personality.h


@contextlib.contextmanager
def aslr(on: bool):
    """Processes started inside run with address-space randomisation on or off (this process's personality, which
    an exec'd child inherits); Linux only."""
    libc = ctypes.CDLL(None, use_errno=True)
    before = libc.personality(0xFFFFFFFF)  # this value only asks
    if before == -1 or libc.personality(before & ~ADDR_NO_RANDOMIZE | (0 if on else ADDR_NO_RANDOMIZE)) == -1:
        raise SystemExit(f"personality() failed (errno {ctypes.get_errno()}): --aslr alternate needs Linux "
                         "without a seccomp filter on personality")
    try:
        yield
    finally:
        libc.personality(before)


def one_pass(files, out: Path, every: float, settings: Settings) -> dict:
    """A `collect` of every file with the reference every `every` s (bench_models.latkit_pass): {arch:
    latency_ms}, the checks, the drift within the run and whether it warned."""
    p = bench.latkit_pass(files, "onnxruntime", settings, str(out), reference=True, reference_every_s=every)
    drift = p["drift"]
    return {"ms": {a: r["latency_ms"] for a, r in p["rows"].items()}, "checks": p["reference"],
            "seconds": p["seconds_per_model"] * len(files), "reference_drift": drift.drift if drift else None,
            "warned": bool(drift and drift.warning())}


def corr(x, y):
    """Pearson's r, None where either side does not vary."""
    return float(np.corrcoef(x, y)[0, 1]) if np.std(x) and np.std(y) else None


def figures(passes: list, models: list, twins: list) -> dict:
    """Pass levels, model levels and their correlation, and every pair of passes compared."""
    lat = np.log([[p["ms"][m] for p in passes] for m in models])
    lat -= lat.mean(axis=1, keepdims=True)
    level = np.median(lat, axis=0)
    ref = [bench.reference_level(p["checks"]) for p in passes]
    out = {"pass_level": [float(x) for x in level], "reference_ms": ref,
           "reference_drift": [p["reference_drift"] for p in passes], "warned": [p["warned"] for p in passes],
           "seconds_per_pass": [p["seconds"] for p in passes],
           "models": {m: {"ms": float(np.exp(np.mean(np.log([p["ms"][m] for p in passes])))),
                          "level": [float(x) for x in row],
                          "corr": corr(row, level)}
                      for m, row in zip(models, lat)}, "pairs": {}}
    for i, j in itertools.combinations(range(len(passes)), 2):
        a, b = passes[i]["ms"], passes[j]["ms"]
        c = compare([a[m] for m in models], [b[m] for m in models])
        aa = bench.aa_diffs([a, b], [t.removesuffix("~aa") for t in twins])
        out["pairs"][f"{i}-{j}"] = dict(c, aa_median=float(np.median(aa)) if aa else None,
                                        reference_shift=ref[j] / ref[i] - 1)
    out["pass_level_lag1"] = corr(level[:-1], level[1:]) if len(level) > 2 else None
    conditions = {"all": range(len(passes))}
    if any("aslr" in p for p in passes):
        conditions = {c: [k for k, p in enumerate(passes) if p["aslr"] == c] for c in ("on", "off")}
    out["spread"] = {c: spread([passes[k] for k in ks], [t.removesuffix("~aa") for t in twins])
                     for c, ks in conditions.items() if len(ks) > 1 and twins}
    return out


def spread(passes: list, names: list) -> dict:
    """Per network timed with its twin: the sd over passes of log of the pair's mean (how far passes move it) and
    the sd of that mean's within-pass noise (half the sd of the log twin ratio), with their medians."""
    per = {}
    for n in names:
        x, t = (np.log([p["ms"][m] for p in passes]) for m in (n, f"{n}~aa"))
        per[n] = {"between_sd": float(np.std((x + t) / 2, ddof=1)), "within_sd": float(np.std(x - t, ddof=1) / 2)}
    return {"passes": len(passes), "models": per,
            "between_sd_median": float(np.median([v["between_sd"] for v in per.values()])),
            "within_sd_median": float(np.median([v["within_sd"] for v in per.values()]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--every", type=float, default=8.0, help="seconds between reference checks (default 8)")
    ap.add_argument("--models", nargs="*", help="ONNX files instead of the zoo")
    ap.add_argument("--zoo", help="zoo networks to time (comma-separated names; default all)")
    ap.add_argument("--aslr", choices=("on", "alternate"), default="on",
                    help="'alternate': every other pass's agent runs with address-space randomisation off")
    ap.add_argument("--candidate", action="append", default=[], help="an ONNX network proposed as a reference, "
                    "timed among the files with a twin; 'mobile' builds the one the README tells of")
    ap.add_argument("--aa", default=",".join(bench.AA_DEFAULT),
                    help="zoo networks timed with an A/A twin ('all': every network)")
    ap.add_argument("--json", default="scripts/bench_drift.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    if args.models:
        arts = [Artifact.from_file(p, arch=Path(p).stem) for p in args.models]
    else:
        from latkit.collector import zoo
        arts, failed = bench.zoo_files("onnxruntime", args.zoo.split(",") if args.zoo else list(zoo.ZOO), work)
    arts += [Artifact.from_file(mobile_candidate(work) if p == "mobile" else p, arch=f"candidate-{Path(p).stem[:12]}")
             for p in args.candidate]
    paired = ({a.arch for a in arts} if args.aa == "all" else set(args.aa.split(","))) | {
        a.arch for a in arts if a.arch.startswith("candidate-")}
    twins = [bench.twin(a, work) for a in arts if a.arch in paired]
    files = arts + twins
    passes = []
    for k in range(args.passes):
        on = args.aslr == "on" or k % 2 == 0
        print(f"pass {k + 1} of {args.passes} ({len(files)} files{'' if on else ', ASLR off'}) ...", flush=True)
        with aslr(on) if args.aslr == "alternate" else contextlib.nullcontext():
            passes.append(dict(one_pass(files, work / f"p{k}", args.every, Settings()),
                               **({} if args.aslr == "on" else {"aslr": "on" if on else "off"})))
    res = figures(passes, [a.arch for a in arts], [t.arch for t in twins])
    p = bench.probe("local")
    res.update(machine=f"{p['cpu_model']}, {p['cpu_count']} CPUs", date=time.strftime("%Y-%m-%d %H:%M"),
               every_s=args.every, aslr=args.aslr, load_1min=bench.load_now())
    Path(args.json).write_text(json.dumps(res, indent=1))
    print("pass levels (%):", " ".join(f"{x * 100:+.2f}" for x in res["pass_level"]),
          "| reference ms:", " ".join(f"{x:.4f}" for x in res["reference_ms"]), "| warned:", res["warned"])
    pairs = list(res["pairs"].items())
    if len(pairs) > 15:  # many passes: the pairs' medians, each pair is in the JSON
        pairs = [(f"pairs (median of {len(pairs)})", {k: float(np.median([c[k] or 0 for _, c in pairs])) for k in
                                                      ("median_rel_diff", "median_rel_diff_less_shift", "shift",
                                                       "aa_median", "reference_shift")})]
    for pair, c in pairs:
        print(f"passes {pair}: median |diff| {c['median_rel_diff'] * 100:.2f} %, less shift "
              f"{c['median_rel_diff_less_shift'] * 100:.2f} % (shift {c['shift'] * 100:+.2f} %), A/A "
              f"{(c['aa_median'] or 0) * 100:.2f} %, reference moved {c['reference_shift'] * 100:+.2f} %")
    for c, sp in res["spread"].items():
        print(f"spread between passes ({c}, {sp['passes']} passes; median sd {sp['between_sd_median'] * 100:.2f} % "
              f"against {sp['within_sd_median'] * 100:.2f} % within):",
              " ".join(f"{m[:24]} {v['between_sd'] * 100:.2f}/{v['within_sd'] * 100:.2f} %" for m, v in sp["models"].items()))
    print(f"lag-1 correlation of the pass levels: {res['pass_level_lag1']:+.2f}" if res["pass_level_lag1"]
          is not None else "lag-1 correlation of the pass levels: -")
    for m, f in sorted(res["models"].items(), key=lambda kv: kv[1]["ms"]):
        corr = f"{f['corr']:+.2f}" if f["corr"] is not None else "-"
        print(f"  {m[:40]:40s} {f['ms']:8.3f} ms  levels " + " ".join(f"{x * 100:+.2f}" for x in f["level"])
              + f"  corr {corr}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
