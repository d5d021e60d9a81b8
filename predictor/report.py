"""A fit's report for people: predicted-vs-measured scatter (PNG) and a Markdown summary."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from latkit.collector.dataset import save_png
from latkit.collector.validate import write_atomic


def write_report(out_dir, title: str, pred, true, metrics: dict, target: str = "latency_ms") -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred, true = np.asarray(pred), np.asarray(true)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.scatter(true, pred, s=6, alpha=0.5)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    xs = np.linspace(lo, hi, 50)
    ax.plot(xs, xs, "k-", lw=0.8, label="exact")
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="tab:green", alpha=0.15, label="±10 %")
    ax.set_xlabel(f"measured {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_title(f"{title}\nρ={metrics['spearman']:.3f}  ±10 %: {metrics['acc10'] * 100:.1f} %", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    png = save_png(fig, out / "scatter.png", dpi=120)
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in metrics.items() if not isinstance(v, (list, dict)))
    md = write_atomic(out / "summary.md", f"# {title}\n\n| metric | value |\n|---|---|\n{rows}\n\n![predicted vs measured](scatter.png)\n")
    return [png, md]
