"""Render the README's benchmark tables from the JSON the benchmark scripts wrote, so no figure is pasted
by hand. A block in README.md looks like

    <!-- table: scripts/bench_measure.json -->
    ...generated...
    <!-- end table -->

and is rewritten by the renderer named after the JSON file (RENDERERS); `scripts/X.json#part` names one of
several tables rendered from one file. `--check` exits 1 if the README differs from what the JSON gives
(the tests run it).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<src>[^ ]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def bench_measure(d: dict) -> str:
    lines = [f"{d['n']} NB201 archs, two passes each, on {d['machine']} ({d['date']}):", "",
             "| timer | statistic | Spearman (pass 1 vs 2) | median rel. diff | p90 rel. diff | s / arch |",
             "|---|---|---|---|---|---|"]
    for name, run in d["runs"].items():
        for stat, c in run["statistics"].items():
            lines.append(f"| {name} | {stat} | {c['spearman']:.4f} | {c['median_rel_diff'] * 100:.2f} % | "
                         f"{c['p90_rel_diff'] * 100:.2f} % | {run['seconds_per_arch']:.2f} |")
    # the machine is shared: the load other work put on it during each pass (start-end) is part of the figures
    loads = [f"{name} " + " and ".join(f"{a:.1f}-{b:.1f}" for a, b in run["load_1min"])
             for name, run in d["runs"].items() if "load_1min" in run]
    if loads:
        lines += ["", "1-min load average during the two passes: " + "; ".join(loads) + "."]
    kept = [f"{name} {run['rounds_on_reused_session'] * 100:.0f} % (median load {run['load_ms_median']:.0f} ms)"
            for name, run in d["runs"].items() if "rounds_on_reused_session" in run]
    if kept:
        lines.append("Rounds timed on a session the agent kept: " + "; ".join(kept) + ".")
    return "\n".join(lines) + "\n"


PUBLISHED = ROOT / "datasets" / "help" / "published.json"
TASKS = ROOT / "datasets" / "help" / "tasks.json"
FBNET_MEAN_GOAL = 0.85  # issue 15: FBNet mean over tasks 0-5, and no task below its best published number


def _where(section: dict) -> str:
    """Machine, date and the load other work put on it (timings depend on both)."""
    start, end = section["load_1min"]
    return (f"{section['machine']} ({section['date']}; 1-min load average {start:.1f} at the start, {end:.1f} at "
            "the end)")
BASELINES = ("NASFLAT", "MultiPredict", "HELP")


def bench_predictor_transfer(d: dict) -> str:
    """latkit beside the published baselines (read from datasets/help/published.json, the one place they live);
    the best of each row in bold."""
    t, published = d["transfer"], json.loads(PUBLISHED.read_text())["tasks"]
    lines = [f"{_where(t)}; {t['seeds']} seeds, {t['target_samples']} target samples chosen by "
             f"latkit's sampler, <= {t['source_samples']} archs per source. ρ is Spearman's over the archs the model "
             "never saw (every arch the targets have but the target samples), mean over targets; the published "
             "columns and their papers are in `datasets/help/published.json`:", "",
             f"| task | paper | latkit ρ (mean ± std over seeds) | {' | '.join(BASELINES)} | weakest target | "
             f"archs scored | wall time, {t['seeds']} seeds |", "|---|---|---|---|---|---|---|---|---|"]
    order = [f"{space} {tid}" for space, ids in json.loads(TASKS.read_text()).items() for tid in ids]
    below = []
    for key in sorted(t["tasks"], key=lambda k: order.index(k) if k in order else len(order)):
        r, paper = t["tasks"][key], published.get(key, {})
        scores = {"latkit": round(r["mean_spearman"], 3), **{m: paper[m] for m in BASELINES if m in paper}}
        best = max(scores.values())
        below += [key] if scores["latkit"] < best else []
        cell = {m: (f"**{v:.3f}**" if v == best else f"{v:.3f}") for m, v in scores.items()}
        weakest = min(r["per_target"].items(), key=lambda kv: kv[1]["spearman"])
        lines.append(f"| {key} | {paper.get('paper_task', '-')} | {cell['latkit']} ± {r['mean_spearman_std']:.3f} | "
                     + " | ".join(cell.get(m, "-") for m in BASELINES)
                     + f" | {weakest[0]} {weakest[1]['spearman']:.3f} | "
                     f"{min(x['n_test'] for x in r['per_target'].values()):,} | {r['seconds']:.0f} s |")
    fbnet = [k for k in order if k.startswith("fbnet ")]
    have = [t["tasks"][k]["mean_spearman"] for k in fbnet if k in t["tasks"]]
    mean = sum(have) / len(have)
    lines += ["", f"FBNet mean over tasks {', '.join(k.split()[1] for k in fbnet if k in t['tasks'])}: "
                  f"**{mean:.3f}** (goal >= {FBNET_MEAN_GOAL}: {'met' if mean >= FBNET_MEAN_GOAL else 'missed'}"
                  + (f"; {len(fbnet) - len(have)} task(s) not run" if len(have) < len(fbnet) else "")
                  + "). Tasks below their best published number: " + (", ".join(below) or "none") + "."]
    return "\n".join(lines) + "\n"


def bench_predictor_live(d: dict) -> str:
    """build's own time per round beside its measuring time, and adapt end to end, against issue 15's goals."""
    live = d["live"]
    b, a, g = live["build"], live["adapt"], live["goals"]
    lines = [f"{_where(live)}; nb201 on `local`, default timing settings, empty dataset and export cache, each "
             f"command a fresh process. `predictor build {b['args']}` ({b['model']} ensemble); \"fitting\" is the "
             "loop's own time between two batches (fit, score on the held-out set, choose the next batch; in round 0 "
             "also the choice of model by 5-fold CV, made once):", "",
             "| round | archs measured | measuring s | fitting s | fitting / measuring | held-out ±10 % | spearman |",
             "|---|---|---|---|---|---|---|"]
    for h in b["rounds"]:
        lines.append(f"| {h['round']} | {h['n_measured']} | {h['measure_s']:.1f} | {h['fit_s']:.2f} | "
                     f"{h['fit_s'] / h['measure_s'] * 100:.1f} % | {h['acc10']:.3f} | {h['spearman']:.3f} |")
    share_ok = b["fit_share_max"] < g["fit_share"]
    adapt_ok = a["seconds"] < g["adapt_s"]
    lines += ["", f"Refitting between rounds takes at most {b['fit_share_max'] * 100:.1f} % of the round's measuring "
                  f"time (goal < "
                  f"{g['fit_share'] * 100:.0f} %: {'met' if share_ok else 'missed'}). `predictor adapt --n {a['n']}`: "
                  f"{a['seconds']:.0f} s end to end, the {a['n']} measurements included (goal < {g['adapt_s']} s: "
                  f"{'met' if adapt_ok else 'missed'}); expected Spearman {a['cv_spearman']:.3f} and ±10 % "
                  f"{a['cv_acc10'] * 100:.0f} % (5-fold CV on the {a['n']})."]
    return "\n".join(lines) + "\n"


def bench_predictor_fit(d: dict) -> str:
    f = d["fit"]
    lines = [f"{_where(f)}; `fit` with `--model auto`, scored on every arch of the device it did "
             "not choose (`help`: datasets/help, `own`: datasets/local-cpu-nb201-fbnet):", "",
             "| data | space | device | budget | model | spearman | kendall | MAPE % | ±5 % | ±10 % | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in f["runs"].items():
        data, space, device = key.split()
        lines.append(f"| {data} | {space} | {device} | {r['budget']} | {r['model']} | {r['spearman']:.3f} | "
                     f"{r['kendall']:.3f} | {r['mape']:.1f} | {r['acc5']:.3f} | {r['acc10']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def bench_predictor_predict(d: dict) -> str:
    p = d["predict"]
    rates = ", ".join(f"{name} {m['archs_per_second'] / 1000:,.0f}k" for name, m in p["models"].items())
    n = next(iter(p["models"].values()))["archs"]
    fast = [name for name, m in p["models"].items() if m["archs_per_second"] >= 100_000]
    return (f"Batch prediction of all {n:,} NB201 archs, archs per second (encodings cached; {_where(p)}): "
            f"{rates}. The >= 100k archs/s goal holds for {', '.join(fast) or 'none'}.\n")


def bench_store(d: dict) -> str:
    """The store's figures beside the goals of issue 14."""
    g, n = d["goals"], d["single_files"]
    lines = [f"{d['rows']:,} rows, {d['samples']} samples each, on {d['machine']} ({d['date']}; 1-min load average "
             f"{d['load_1min'][0]:.1f} at the start, {d['load_1min'][1]:.1f} at the end):", "",
             "| figure | measured | goal |", "|---|---|---|",
             f"| done keys read (resume), {d['batched_files']} batched files | {d['resume_keys_s']:.2f} s | "
             f"< {g['resume_keys_s']:g} s |",
             f"| done keys read after compaction ({d['compacted_files']} files) | {d['resume_keys_compacted_s']:.2f} s "
             "| |",
             f"| bytes per row, batched | {d['bytes_per_row']:,.0f} | <= {g['bytes_per_row']:,} |",
             f"| bytes per row, compacted | {d['compacted_bytes_per_row']:,.0f} | |",
             f"| bytes per row, single-row files | {d['single_bytes_per_row']:,.0f} | |",
             f"| compaction of {n:,} single-row files | {d['compact_s']:.1f} s ({d['compact_s'] / n * 1e3:.2f} ms "
             f"per file; 1-min load {d['compact_load_1min'][0]:.1f} as it began) | < {g['compact_s']:g} s for 100,000 |",
             f"| done keys read, {n:,} single-row files | " + (
                 f"{d['resume_keys_single_s']:.1f} s" if d["resume_keys_single_s"] is not None else
                 "not measured: this run predates chunked reads (one scan held ~230 KB per file, 23 GB at 100,000)") + " | |",
             f"| batched write of {d['rows']:,} rows | {d['write_s']:.1f} s | |"]
    return "\n".join(lines) + "\n"


def bench_fleet_export(d: dict) -> str:
    """The OFA export pipeline (scripts/bench_fleet.py --ofa-archs N) beside its goals."""
    e, g = d["export_pipeline"], d["export_pipeline"]["goals"]
    duty = lambda run: " / ".join(f"{v * 100:.1f} %" for v in run["duty_cycle"].values())  # noqa: E731
    protocol = ("default timing settings" if e.get("settings") == "defaults" else
                f"{e['timed_s_per_model'][0]}-{e['timed_s_per_model'][1]} s timed per model, 1 round")
    streamed = "streamed into the device queues" if e.get("streamed") else "all before timing"
    lines = [f"{e['archs']} OFA archs ({e['space']}, {protocol}) x {e['devices']} loopback sshd devices, "
             f"{e['export_workers']} export worker(s), exports {streamed}, on {e['machine']} ({e['date']}; 1-min "
             f"load average {e['load_1min']:.1f}):", "",
             "| collection | wall s | device duty cycle (timing / wall, exports included) | time to first timing |",
             "|---|---|---|---|"]
    for label, run in (("cold export cache", e["cold"]), ("every export cached (resume)", e["cached"])):
        lines.append(f"| {label} | {run['wall_s']:.1f} | {duty(run)} | {run['first_timing_s']:.1f} s |")
    lines += ["", f"Goals: duty cycle >= {g['duty_cycle_cached'] * 100:.0f} % once exports are faster than "
              f"timing; a fully-cached resume of 200 OFA archs starts timing within {g['first_timing_s_at_200']:.0f} s. "
              f"The host's part of that start (sample, validate, find all {e['archs']} exports by key) took "
              f"{e['host_prep_s']:.2f} s; the old content key cost {e['content_key_s_per_arch']:.2f} s per arch "
              f"(build the network, hash its weights), {e['content_key_s_per_arch'] * 200:.0f} s at 200 archs. "
              "The rest of the time to first timing is the devices' start-up (connect, deploy, probe, lease)."]
    return "\n".join(lines) + "\n"


def bench_fleet_overhead(d: dict) -> str:
    """Per-model overhead over SSH (scripts/bench_fleet.py) beside the goal of issue 14."""
    o = d["per_model_overhead"]
    lines = [f"{o['models']} small ONNX CNNs x {len(o['devices'])} loopback sshd devices, onnxruntime, "
             f"{o['min_time']:g}-{o['max_time']:g} s timed per round, on {o['machine']} ({o['date']}; 1-min load "
             f"average {o['load_1min'][0]:.1f} at the start, {o['load_1min'][1]:.1f} at the end):", "",
             "| device | models x rounds | overhead per model | per round | agent starts | goal |", "|---|---|---|---|---|---|"]
    for name, v in o["devices"].items():
        lines.append(f"| {name} | {v['models']} x {v['rounds']} | {v['overhead_s_per_model']:.3f} s | "
                     f"{v['overhead_s_per_round'] * 1e3:.0f} ms | {v['agent_starts']} | < 0.3 s per model |")
    return "\n".join(lines) + "\n"


# The statistics each table shows: latkit's latency_ms (p10) beside the median and minimum of the same samples, the
# peers' medians; for the loaded host, the thread-CPU-time proposal's p10 of both clocks.
QUIET_STATS = ("latency_ms", "median_ms", "min_ms", "median")
LOADED_STATS = ("latency_ms", "median", "cpu p10", "wall p10")
GOAL_MED, GOAL_MAX, GOAL_RHO, GOAL_S = 0.03, 0.10, 0.995, 2.5  # issue 23, for a quiet host and default settings


def _loads(run: dict) -> str:
    return " and ".join(f"{a:.1f}-{b:.1f}" for a, b in run["load_1min"])


def bench_models(d: dict, stats=QUIET_STATS) -> str:
    """Real networks (scripts/bench_models.py): pass vs pass and A/A for every timer, run and set."""
    lines = [f"On {d['machine']}, " + ", ".join(f"{k} {v}" for k, v in d["runtimes"].items())
             + f", torchvision {d['torchvision']} ({d['date']}" + (f"; {d['host']}" if d.get("host") else "")
             + "). Exports: "
             + "; ".join(f"{fmt} {len(e['ok'])} of {len(e['ok']) + len(e['failed']) + len(e.get('not_attempted', []))}"
                         + (f" (failed: {', '.join(e['failed'])})" if e["failed"] else "")
                         + (f" ({len(e['not_attempted'])} not attempted: {e['why_not']})" if e.get("not_attempted")
                            else "")
                         for fmt, e in d["exports"].items()) + ".", "",
             "| run | set | runtime | timer | statistic | Spearman | median rel. diff | max rel. diff | A/A median | "
             "A/A max | s / model | 1-min load, pass 1 and 2 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in d["runs"].items():
        tag, label, runtime = key.split()
        for timer, f in r["timers"].items():
            for stat, c in f["statistics"].items():
                if stat not in stats:
                    continue
                a = f["aa"].get(stat)
                aa = (f"{a['median_rel_diff'] * 100:.2f} % | {a['max_rel_diff'] * 100:.1f} %" if a else "- | -")
                lines.append(f"| {tag} | {label} ({f['n']}) | {runtime} | {timer} | {stat} | {c['spearman']:.4f} | "
                             f"{c['median_rel_diff'] * 100:.2f} % | {c['max_rel_diff'] * 100:.1f} % | {aa} | "
                             f"{f['seconds_per_model']:.2f} | {_loads(f)} |")
    lines.append("")
    for key, r in d["runs"].items():
        lk = r["timers"].get("latkit")
        if not lk or key.startswith("record "):
            continue
        c, a = lk["statistics"]["latency_ms"], lk["aa"].get("latency_ms")
        met = {"median": c["median_rel_diff"] <= GOAL_MED, "max": c["max_rel_diff"] <= GOAL_MAX,
               "Spearman": c["spearman"] >= GOAL_RHO, "time": lk["seconds_per_model"] <= GOAL_S}
        stops = ", ".join(f"{k} {v * 100:.0f} %" for k, v in lk["stopped_by"].items())
        lines.append(f"- {key}: latency_ms {lk['latency_ms_range'][0]:.1f}-{lk['latency_ms_range'][1]:.1f} ms; "
                     f"goals (median <= 3 %, max <= 10 %, Spearman >= 0.995, <= 2.5 s / model) "
                     + ", ".join(f"{k} {'met' if v else 'missed'}" for k, v in met.items())
                     + (f"; A/A floor {a['median_rel_diff'] * 100:.2f} % (median of {a['n']})" if a else "")
                     + (f"; pass 2 ran {c['shift'] * 100:+.2f} % (median ratio), median difference less that "
                        f"{c['median_rel_diff_less_shift'] * 100:.2f} %" if "shift" in c else "")
                     + (f"; the reference moved {lk['reference']['shift'] * 100:+.2f} % (A/A floor "
                        f"{lk['reference']['aa_floor'] * 100:.2f} %, {sum(lk['reference']['checks'])} checks)"
                        if lk.get("reference") else "")
                     + f"; stopped by {stops}.")
    return "\n".join(lines) + "\n"


def replay_protocols(d: dict) -> str:
    """Candidate protocols replayed on the recorded samples (scripts/replay_protocols.py --bench)."""
    sets = list(next(iter(d["named"].values()))["sets"])
    rec = "; ".join(f"{lb}: {r['models']} models + {r['aa_pairs']} A/A twins, 1-min load {_loads(r)}"
                    for lb, r in d["recorded"].items())
    lines = [f"{d['candidates']} candidates replayed ({d['runtime']}, {d['machine']}, {d['date']}; {rec}). "
             "s / model is estimated: load + rounds x (per-round overhead + warmup) + the timed work kept:", "",
             "| protocol | " + " | ".join(f"{lb} Spearman | {lb} median | {lb} max | {lb} A/A median | {lb} s / model"
                                          for lb in sets) + " |", "|---" * (1 + 5 * len(sets)) + "|"]

    def row(title, e):
        cells = []
        for lb in sets:
            f = e["sets"][lb]
            aa = f"{f['aa_median'] * 100:.2f} %" if f["aa_median"] is not None else "-"
            cells += [f"{f['spearman']:.4f}", f"{f['median_rel_diff'] * 100:.2f} %", f"{f['max_rel_diff'] * 100:.1f} %",
                      aa, f"{f['seconds_per_model']:.2f}"]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    for k, e in d["named"].items():
        row(f"**{k}**: {e['name']}", e)
    for k, e in d["best_per_statistic"].items():
        row(f"best with {k}: {e['name']}", e)
    return "\n".join(lines) + "\n"


def bench_graphs(d: dict) -> str:
    """scripts/bench_graphs.py's own Markdown (imported here: it needs latkit's predictor)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_graphs import markdown
    return markdown(d) + "\n"


RENDERERS = {"bench_store.json": bench_store, "bench_fleet.json#export": bench_fleet_export,
             "bench_fleet.json#overhead": bench_fleet_overhead,
             "bench_measure.json": bench_measure, "bench_predictor.json#transfer": bench_predictor_transfer,
             "bench_predictor.json#fit": bench_predictor_fit,
             "bench_predictor.json#live": bench_predictor_live, "bench_predictor.json#predict": bench_predictor_predict,
             "bench_models.json": bench_models, "bench_graphs.json": bench_graphs,
             "bench_models_loaded.json": lambda d: bench_models(d, LOADED_STATS),
             "replay_protocols.json": replay_protocols}


def render(text: str) -> str:
    def one(m):
        path, _, part = m["src"].partition("#")
        src = ROOT / path
        body = RENDERERS[src.name + (f"#{part}" if part else "")](json.loads(src.read_text()))
        return m.group(1) + body + m.group(4)
    return BLOCK.sub(one, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is not what the JSON renders to")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md tables differ from the benchmark JSON; run scripts/render_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
