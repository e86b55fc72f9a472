"""Print the README's results tables (markdown) from the pipeline's versioned metrics.

    python scripts/results_table.py        # after `dvc repro`; paste into README.md

Reads metrics/{data,teacher,student,student_triplet,eval,latency}.json and
plots/latency_scaling.csv, so the README shows exactly what `dvc metrics show` shows.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

M = Path("metrics")
COLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def load(name: str) -> dict:
    path = M / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def row(name: str, m5: dict, m1: dict, note: str = "") -> str:
    cells = [f"{m5[c]:.1f}" for c in COLS] + [f"**{m5['rsum']:.1f}**", f"{m1['rsum']:.1f}" if m1 else "–"]
    return f"| {name} | " + " | ".join(cells) + f" | {note} |"


def effectiveness(ev: dict, data: dict) -> list[str]:
    out = ["| model (test set) | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | rsum 5K | rsum 1K | |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    names = {"teacher": ("teacher (alignment head, MrSw)", "exhaustive scoring"),
             "student": ("student (distilled)", f"through the {ev['student'].get('index', '')} index"),
             "student_exact": ("student, exact search", "flat dot products"),
             "student_triplet": ("student without distillation", "triplet loss only"),
             "two_stage": ("two-stage", f"student top-{ev['two_stage'].get('rerank_k')} re-ranked by the teacher")}
    for key, (label, note) in names.items():
        if key in ev:
            out.append(row(label, ev[key]["5k"], ev[key].get("1k", {}), note))
    for key, (label, note) in {"bow_tfidf": ("bag of words (oracle scene words)", "non-learned"),
                               "colour_histogram": ("colour histogram", "non-learned")}.items():
        b = data.get("baselines", {}).get(key)
        if b:
            out.append(row(label, b["5k"], b.get("1k", {}), note))
    return out


def cross_rows(ev: dict) -> list[str]:
    if "cross_encoder" not in ev:
        return []
    s = ev["cross_encoder"]["fold0_sampled"]
    out = ["", f"Cross-encoder, fold 0 of the test set (1,000 images), {int(s['t2i_queries'])} text and "
               f"{int(s['i2t_queries'])} image queries sampled (the same queries for every row):", "",
           "| model | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | rsum |", "|---|---|---|---|---|---|---|---|"]
    for key, label in (("cross_encoder", "cross-encoder"), ("teacher", "teacher"), ("student_exact", "student")):
        m = ev[key]["fold0_sampled"]
        out.append(f"| {label} | " + " | ".join(f"{m[c]:.1f}" for c in COLS) + f" | {m['rsum']:.1f} |")
    return out


def latency(lat: dict, scaling: pd.DataFrame) -> list[str]:
    t, im = lat["text"], lat["image"]

    def p50(method: str, n: int, query: str = "text") -> str:
        hit = scaling[(scaling.method == method) & (scaling.n_images == n) & (scaling["query"] == query)]
        return f"{hit.p50_ms.iloc[0]:.1f}" if len(hit) else "–"
    out = ["| per text query, p50 ms (1 thread) | 1K | 5K | 25K* | 100K* |", "|---|---|---|---|---|"]
    for method, label in (("student_flat_e2e", "student, exact (flat) search"),
                          ("student_ivf_flat_e2e", "student, IVF-Flat"), ("teacher", "teacher, exhaustive"),
                          ("cross_encoder", "cross-encoder, exhaustive")):
        if (scaling.method == method).any():
            out.append(f"| {label} | " + " | ".join(p50(method, n) for n in (1000, 5000, 25000, 100000)) + " |")
    out += ["", "| on the 5K test collection | text query p50 / p95 ms | image query p50 / p95 ms |",
            "|---|---|---|"]
    for key, label in (("encoder_only", "query encoder alone (MiniLM / EfficientNet-Lite0)"),
                       ("student", f"student ({t['student'].get('index')} index)"),
                       ("two_stage", f"two-stage (re-rank top-{t['two_stage'].get('rerank_k')})")):
        out.append(f"| {label} | {t[key]['p50_ms']:.1f} / {t[key]['p95_ms']:.1f} | "
                   f"{im[key]['p50_ms']:.1f} / {im[key]['p95_ms']:.1f} |")
    if "teacher" in im:
        out.append(f"| teacher, exhaustive | {p50('teacher', 5000)} | {im['teacher']['p50_ms']:.1f} |")
    out += ["", "| summary | value |", "|---|---|"]
    for k, v in lat["summary"].items():
        if v is not None:
            out.append(f"| {k} | {v:.2f} |")
    for k, v in lat["targets"].items():
        verdict = "n/a" if v["ok"] is None else "pass" if v["ok"] else "FAIL"
        out.append(f"| target {k} (limit {v['limit']}) | {v['value']:.2f} ({verdict}) |")
    return out


def main() -> None:
    ev, data, lat = load("eval"), load("data"), load("latency")
    lines = effectiveness(ev, data) + cross_rows(ev)
    if lat:
        lines += [""] + latency(lat, pd.read_csv("plots/latency_scaling.csv"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
