"""plots/latency.png and plots/efficiency.png, from the latency report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

def plot_efficiency(points: list[dict[str, Any]], path: Path) -> None:
    """plots/efficiency.png: rsum against per-query latency (log axis), a point per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in points:
        marker = "s" if p["method"].startswith("cross") else "D" if p["method"] == "teacher" else "o"
        ax.semilogx(p["p50_ms"], p["rsum"], marker, color="C3" if p["method"].startswith("cross") else "C0")
        ax.annotate(p["method"], (p["p50_ms"], p["rsum"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set(xlabel="p50 latency per text query, whole test collection (ms, log)",
           ylabel=f"rsum ({points[0]['protocol']} protocol)",
           title="Effectiveness vs efficiency (red: cross-encoder, fold 0)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def plot_report(report: dict[str, Any], depths: list[dict[str, Any]], path: Path) -> None:
    """plots/latency.png: latency against collection size, index kinds, re-rank depth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from ..io import atomic_path

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    sc = pd.DataFrame(report["scaling"])
    for (method, query), g in sc.groupby(["method", "query"]):
        ax[0].loglog(g["n_images"], g["p50_ms"], "o-", label=f"{method} ({query} query)")
    ax[0].set(xlabel="collection size (images)", ylabel="p50 latency per query (ms)",
              title="Latency vs collection size (synthetic past the test set)")
    ax[0].legend(fontsize=7)
    kinds = pd.DataFrame(report["index_kinds"])
    ax[1].plot(kinds["search_p50_ms"], kinds["recall_at_k_vs_flat"], "o")
    for _, r in kinds.iterrows():
        ax[1].annotate(r["kind"], (r["search_p50_ms"], r["recall_at_k_vs_flat"]))
    ax[1].set(xlabel="search p50 (ms, query embedded)", ylabel="recall@10 of exact top-10", title="Index kinds")
    d = pd.DataFrame(depths)
    ax[2].plot(d["e2e_p50_ms"], d["rsum"], "o-")
    for _, r in d.iterrows():
        ax[2].annotate(f"k={int(r['rerank_k'])}", (r["e2e_p50_ms"], r["rsum"]))
    ax[2].set(xlabel="two-stage p50 end to end (ms)", ylabel="rsum (full test set)", title="Re-rank depth")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
