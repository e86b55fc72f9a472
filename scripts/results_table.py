"""Print the README's results tables (markdown) from the pipeline's versioned metrics.

    python scripts/results_table.py               # after `dvc repro`; paste into README.md
    python scripts/results_table.py --headline    # the effectiveness table alone (./run.sh ends on it)
    python scripts/results_table.py --update README.md docs/RESULTS.md docs/SPEED.md

--update rewrites, in each file, every block between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` with section NAME (effectiveness, binding, regimes, latency) rendered from the
metrics; tests/test_docs.py fails when a committed block differs from its rendering.

Reads metrics/{data,eval,latency,seeds,seeds_family1}.json (seeds*: scripts/seed_spread.py; *_transformer:
the paper's student on the same seeds) and
plots/latency_scaling.csv, so the README shows exactly what `dvc metrics show` shows. The
protocols are those eval.json holds: 5K and 1K on the COCO-sized test set, the whole set (`n<N>`)
on another size.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

from aladin.evaluation.metrics import full_key

COLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def load(metrics: Path, name: str) -> dict:
    path = metrics / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def protocols(ev: dict) -> list[str]:
    """eval.json's protocol keys, the whole test set first (its R@K are the table's)."""
    full = full_key(ev["protocol"]["n_images"])
    return [full] + [k for k in ("1k",) if k in ev["protocol"] and k != full]


def label(key: str) -> str:
    """'5k' -> '5K'; 'n8' -> 'all 8' (a test set of neither protocol's size)."""
    return key.upper() if key.endswith("k") else f"all {key[1:]}"


def size(n: int) -> str:
    return f"{n // 1000}K" if n % 1000 == 0 else str(n)


def row(name: str, metrics: dict, protos: list[str], note: str = "", spread: dict | None = None,
        key: str = "") -> str:
    cells = [f"{metrics[protos[0]][c]:.1f}" for c in COLS]
    for i, proto in enumerate(protos):
        f, m = (spread or {}).get(f"{key}_{proto}_rsum"), metrics.get(proto)
        cell = f"{f['mean']:.1f} ± {f['std']:.1f}" if f else (f"{m['rsum']:.1f}" if m else "–")
        cells.append(f"**{cell}**" if i == 0 else cell)
    return f"| {name} | " + " | ".join(cells) + f" | {note} |"


LEARNED = {"teacher": "teacher (alignment head, MrSw)", "student": "student (distilled)",
           "student_exact": "student, exact search", "student_triplet": "student without distillation",
           "two_stage": "two-stage"}


def effectiveness(ev: dict, data: dict, seeds: dict) -> list[str]:
    spread, protos = seeds.get("figures", {}), protocols(ev)
    n = f" (mean ± std over {seeds['n_seeds']} training seeds)" if seeds else ""
    rsums = " | ".join(f"rsum {label(p)}{n if i == 0 else ''}" for i, p in enumerate(protos))
    out = [f"| model (test set) | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | {rsums} | |",
           "|---" * (8 + len(protos)) + "|"]
    notes = {"teacher": "exhaustive scoring", "student": f"through the {ev['student'].get('index', '')} index",
             "student_exact": "flat dot products", "student_triplet": "triplet loss only",
             "two_stage": f"student top-{ev['two_stage'].get('rerank_k')} re-ranked by the teacher"}
    for key, name in LEARNED.items():
        if key in ev:
            out.append(row(name, ev[key], protos, notes[key], spread, key))
    if "oracle" in ev:
        out.append(row("oracle (caption parser on the scene records)", ev["oracle"], protos,
                       "the ceiling, pessimistic ties"))
    for key, (name, note) in {"bow_tfidf": ("bag of words (oracle scene words)", "non-learned"),
                              "colour_histogram": ("colour histogram", "non-learned")}.items():
        b = data.get("baselines", {}).get(key)
        if b and protos[0] in b:
            out.append(row(name, b, protos, note))
    if spread:
        out += ["", "| ratio (5K rsum) | mean ± std | per seed |", "|---|---|---|"]
        for key in ("student_rsum_vs_teacher", "student_triplet_rsum_vs_teacher", "two_stage_rsum_vs_teacher",
                    "two_stage_rsum_vs_student"):
            if key in spread:
                f = spread[key]
                out.append(f"| {key} | {f['mean']:.3f} ± {f['std']:.3f} | "
                           + ", ".join(f"{v:.3f}" for v in f["per_seed"].values()) + " |")
    return out


def binding(ev: dict, data: dict, seeds: dict) -> list[str]:
    """Within-family R@1 (binding) and text->image recall as a fraction of the oracle's."""
    if "oracle" not in ev:
        return []
    spread, summary = seeds.get("figures", {}), ev["summary"]

    def cell(key: str, fmt: str) -> str:
        f = spread.get(key)
        return (fmt.format(f["mean"]) + " ± " + fmt.format(f["std"])) if f else fmt.format(summary[key])
    fam, full = ev["oracle"]["within_family"], protocols(ev)[0]
    out = [f"| model | within-family t2i R@1 (chance {fam['t2i_family_chance_r1']:.1f}) | t2i R@1+5+10 at {label(full)} "
           f"as a fraction of the oracle's |", "|---|---|---|"]
    for key in ("teacher", "student", "student_triplet", "two_stage"):
        out.append(f"| {LEARNED[key]} | {cell(f'{key}_family_r1', '{:.1f}')} | {cell(f'{key}_t2i_vs_oracle', '{:.3f}')} |")
    out.append(f"| oracle | {fam['t2i_family_r1']:.1f} | 1 |")
    bow = data.get("baselines", {}).get("bow_tfidf", {}).get("within_family")
    if bow:
        out.append(f"| bag of words (oracle scene words) | {bow['t2i_family_r1']:.1f} | – |")
    rt, o5 = ev["oracle"]["t2i_random_ties"], ev["oracle"][full]
    ties = {k: ev[k]["ties"] for k in ("oracle", "teacher", "student_exact") if "ties" in ev[k]}
    out += ["", f"Oracle text->image at {label(full)}: R@1/5/10 {o5['t2i_r1']:.1f} / {o5['t2i_r5']:.1f} / {o5['t2i_r10']:.1f} "
                f"with every tied true image ahead (the protocol's rule), {rt['t2i_r1']:.1f} / {rt['t2i_r5']:.1f} / "
                f"{rt['t2i_r10']:.1f} picking at random among them. Queries with an exact score tie "
                "(t2i captions / i2t images): "
            + "; ".join(f"{k} {v['t2i_tied']} / {v['i2t_tied']}" for k, v in ties.items()) + "."]
    return out


def cross_rows(ev: dict) -> list[str]:
    if "cross_encoder" not in ev:
        return []
    s = ev["cross_encoder"]["fold0_sampled"]
    out = ["", f"Cross-encoder, fold 0 of the test set (1,000 images). Exhaustive: {int(s['t2i_queries'])} text "
               f"and {int(s['i2t_queries'])} image queries sampled, each against the whole fold (the same queries "
               "for every row), with the 95% bootstrap interval of rsum over queries:", "",
           "| model | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | rsum | 95% interval |",
           "|---|---|---|---|---|---|---|---|---|"]
    for key, name in (("cross_encoder", "cross-encoder, exhaustive"), ("teacher", "teacher, exhaustive"),
                       ("student_exact", "student")):
        m = ev[key]["fold0_sampled"]
        lo, hi = m["interval_95"]["rsum"]
        out.append(f"| {name} | " + " | ".join(f"{m[c]:.1f}" for c in COLS) + f" | {m['rsum']:.1f} | "
                   f"{lo:.1f} – {hi:.1f} |")
    k = ev["cross_rerank"]["rerank_k"]
    out += ["", f"Re-ranking the student's top {k}, every fold-0 query (5,000 text, 1,000 image):", "",
            "| model | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | rsum | within-family t2i R@1 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key, name in (("cross_rerank", "cross-encoder re-ranks"), ("two_stage", "teacher re-ranks"),
                       ("student", "student alone")):
        m = ev[key]["fold0"]
        family = m.get("within_family", {}).get("t2i_family_r1")
        out.append(f"| {name} | " + " | ".join(f"{m[c]:.1f}" for c in COLS) + f" | {m['rsum']:.1f} | "
                   + ("–" if family is None else f"{family:.1f}") + " |")
    versus = ev["cross_rerank"]["vs_teacher_rerank"]
    lo, hi = versus["rsum_difference_interval_95"]
    out += ["", f"Cross-encoder minus teacher on the same lists: rsum {versus['rsum_difference']:+.1f} (paired "
                f"95% bootstrap interval over queries {lo:+.1f} to {hi:+.1f}), within-family t2i R@1 "
                f"{versus['t2i_family_r1_difference']:+.1f}."]
    return out


def latency(lat: dict, scaling: pd.DataFrame, n_test: int) -> list[str]:
    t, im = lat["text"], lat["image"]

    def p50(method: str, n: int, query: str = "text") -> str:
        hit = scaling[(scaling.method == method) & (scaling.n_images == n) & (scaling["query"] == query)]
        return f"{hit.p50_ms.iloc[0]:.1f}" if len(hit) else "–"
    sizes = sorted(int(n) for n in scaling.n_images.unique())
    out = ["| per text query, p50 ms (1 thread) | " + " | ".join(size(n) + "*" * (n > n_test) for n in sizes)
           + " |", "|---" * (1 + len(sizes)) + "|"]
    for method, name in (("student_flat_e2e", "student, exact (flat) search"),
                         ("student_ivf_flat_e2e", "student, IVF-Flat"), ("teacher", "teacher, exhaustive"),
                         ("cross_encoder", "cross-encoder, exhaustive")):
        if (scaling.method == method).any():
            out.append(f"| {name} | " + " | ".join(p50(method, n) for n in sizes) + " |")
    out += ["", f"| on the {size(n_test)} test collection | text query p50 / p95 ms | image query p50 / p95 ms |",
            "|---|---|---|"]
    for key, name in (("encoder_only", "query encoder alone (MiniLM / EfficientNet-Lite0)"),
                       ("student", f"student ({t['student'].get('index')} index)"),
                       ("two_stage", f"two-stage (re-rank top-{t['two_stage'].get('rerank_k')})")):
        out.append(f"| {name} | {t[key]['p50_ms']:.1f} / {t[key]['p95_ms']:.1f} | "
                   f"{im[key]['p50_ms']:.1f} / {im[key]['p95_ms']:.1f} |")
    if "teacher" in im:
        out.append(f"| teacher, exhaustive | {p50('teacher', n_test)} | {im['teacher']['p50_ms']:.1f} |")
    out += ["", "| summary | value |", "|---|---|"]
    for k, v in lat["summary"].items():
        if v is not None:
            out.append(f"| {k} | {v:.2f} |")
    for k, v in lat["targets"].items():
        verdict = "n/a" if v["ok"] is None else "pass" if v["ok"] else "FAIL"
        out.append(f"| target {k} (limit {v['limit']}) | {v['value']:.2f} ({verdict}) |")
    return out


# Each regime's summary, and the same seeds with the paper's transformer student (wider lists, lists.hard 3;
# run before the codebook student became the default: the teacher rows are the same runs).
REGIMES = {"seeds": "family_size 4 (default)", "seeds_family1": "family_size 1 (no look-alikes)"}
TRANSFORMER = "_transformer"


def regimes(metrics: Path) -> list[str]:
    """Both data regimes side by side (scripts/seed_spread.py summaries), every cell mean ± std over seeds."""
    runs = {name: load(metrics, name) for name in REGIMES}
    runs = {name: r for name, r in runs.items() if r}
    if not runs:
        return []
    paper = {name: load(metrics, name + TRANSFORMER) for name in runs}

    def cell(run: dict, *keys: str, fmt: str = "{:.1f}") -> str:
        if not run:
            return "–"
        figs = [run["figures"].get(k) for k in keys]
        single = run["figures"].get("oracle_family_r1", {}).get("mean") == 100.0   # families of one: no ranking
        if any(f is None for f in figs) or (single and "family" in keys[0]):
            return "–"
        return " / ".join(fmt.format(f["mean"]) + (" ± " + fmt.format(f["std"]) if f["std"] else "") for f in figs)
    rows = [("teacher rsum 5K / 1K", ("teacher_5k_rsum", "teacher_1k_rsum"), "{:.1f}", runs),
            ("student (codebook) rsum 5K / 1K", ("student_5k_rsum", "student_1k_rsum"), "{:.1f}", runs),
            ("student (transformer, the paper's) rsum 5K / 1K", ("student_5k_rsum", "student_1k_rsum"), "{:.1f}", paper),
            ("student without distillation", ("student_triplet_5k_rsum", "student_triplet_1k_rsum"), "{:.1f}", runs),
            ("two-stage (codebook top-100 re-ranked by the teacher)", ("two_stage_5k_rsum", "two_stage_1k_rsum"),
             "{:.1f}", runs),
            ("oracle", ("oracle_5k_rsum", "oracle_1k_rsum"), "{:.1f}", runs),
            ("**student / teacher** (5K rsum): codebook", ("student_rsum_vs_teacher",), "{:.3f}", runs),
            ("student / teacher: transformer", ("student_rsum_vs_teacher",), "{:.3f}", paper),
            ("within-family t2i R@1: teacher / codebook / two-stage",
             ("teacher_family_r1", "student_family_r1", "two_stage_family_r1"), "{:.1f}", runs),
            ("within-family t2i R@1: transformer", ("student_family_r1",), "{:.1f}", paper),
            ("foil accuracy (chance 50): teacher / codebook / text-only",
             ("teacher_foil_accuracy", "student_foil_accuracy", "text_only_foil_accuracy"), "{:.1f}", runs),
            ("foil accuracy: transformer", ("student_foil_accuracy",), "{:.1f}", paper)]
    seeds = {name: f"{r['n_seeds']} seeds" for name, r in runs.items()}
    out = ["| figure (mean ± std over training seeds) | " + " | ".join(f"{REGIMES[n]}, {seeds[n]}" for n in runs) + " |",
           "|---" * (1 + len(runs)) + "|"]
    for title, keys, fmt, source in rows:
        out.append(f"| {title} | " + " | ".join(cell(source[n], *keys, fmt=fmt) for n in runs) + " |")
    return out


def sections(metrics: Path, scaling: Path) -> dict[str, list[str]]:
    """Every table the docs show, by name, rendered from the metrics in `metrics`."""
    ev = load(metrics, "eval")
    if not ev:
        raise SystemExit(f"{metrics / 'eval.json'}: not found (run `dvc repro` first)")
    data, lat, seeds = load(metrics, "data"), load(metrics, "latency"), load(metrics, "seeds")
    out = {"effectiveness": effectiveness(ev, data, seeds), "binding": binding(ev, data, seeds) + cross_rows(ev)}
    if regimes(metrics):
        out["regimes"] = regimes(metrics)
    if lat and scaling.is_file():
        out["latency"] = latency(lat, pd.read_csv(scaling), ev["protocol"]["n_images"])
    return out


BLOCK = re.compile(r"(<!-- results:(\w+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def render_blocks(text: str, tables: dict[str, list[str]]) -> str:
    """`text` with every results block replaced by its section's rendering."""
    def fill(m: re.Match) -> str:
        if m.group(2) not in tables:
            raise SystemExit(f"results block {m.group(2)!r}: no such section ({', '.join(tables)})")
        return m.group(1) + "\n".join(tables[m.group(2)]) + "\n" + m.group(4)
    return BLOCK.sub(fill, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", type=Path, default=Path("metrics"), help="folder of the metrics JSON files")
    ap.add_argument("--scaling", type=Path, default=Path("plots/latency_scaling.csv"),
                    help="the latency stage's scaling table")
    ap.add_argument("--headline", action="store_true",
                    help="the effectiveness table of this run alone (no seed spread, binding, latency)")
    ap.add_argument("--update", nargs="+", type=Path, metavar="FILE",
                    help="rewrite the results blocks of these markdown files in place")
    args = ap.parse_args()
    if args.headline:
        ev = load(args.metrics, "eval")
        if not ev:
            raise SystemExit(f"{args.metrics / 'eval.json'}: not found (run `dvc repro` first)")
        print("\n".join(effectiveness(ev, load(args.metrics, "data"), {})))
        return
    tables = sections(args.metrics, args.scaling)
    if args.update:
        for path in args.update:
            path.write_text(render_blocks(path.read_text(), tables))
        return
    print("\n\n".join("\n".join(lines) for lines in tables.values()))


if __name__ == "__main__":
    main()
