"""Binding diagnostics of the teacher and the students on the scenes data (issue 30, item 3).

    python benchmarks/binding_probe.py [--captions 2000] [--out binding.json]

Reads the pipeline's outputs under --root (scenes data only): data/scenes.jsonl,
features/{train,test}, models/teacher.pt, the students (models/student.pt,
models/student_triplet.pt) and params.yaml (distill.teacher_temperature). Prints one table:

- foil accuracy (%, chance 50) on `--captions` test captions with a verified foil
  (aladin.data.foils: false of their scene, no caption of their family), overall and per kind,
  for every model, beside a text-only control (no image) trained on train captions and their
  foils: far above 50 means the foils are readable from the text alone, and the line says so;
- linear probes (%, test): the colour of the object of a given shape, from frozen embeddings of
  images and captions (students; teacher tokens mean-pooled), against shuffled labels, the
  per-shape majority and a bag-of-attributes code (no binding);
- the teacher's distillation target over a caption's family: entropy, mass on the own image.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
import numpy as np
import torch

from aladin import params
from aladin.data.foils import SCENE_KINDS, family_foils
from aladin.data.lexicon import ATTRIBUTES
from aladin.data.oracle import scene_records
from aladin.evaluation.binding import (bag_features, binding_probe, caption_descs, caption_probe_rows,
                                       family_scores, foil_accuracy, image_probe_rows, mean_tokens, pair_scores,
                                       raw_text_batches, target_entropy, text_detectable, text_only_scores)
from aladin.errors import DataError
from aladin.features import store_backbones
from aladin.io import write_json
from aladin.models.factory import STUDENTS, load_model
from aladin.retrieval.encode import encode_images, encode_texts
from aladin.runtime import run_stage, set_threads
from aladin.store import FeatureStore, open_split


def sample(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` of range(n_total) without replacement, sorted (all of them when n >= n_total)."""
    return np.sort(rng.choice(n_total, min(n, n_total), replace=False))


def foil_pairs(store: FeatureStore, records: list[dict[str, Any]], n: int, seed: int) -> tuple[np.ndarray, list]:
    """`n` sampled captions of `store` that have a verified foil, and their foils."""
    which = sample(store.n_captions, n, np.random.default_rng(seed))
    foils = family_foils(store.captions, store.caption_image, records, seed, which)
    keep = [k for k, f in enumerate(foils) if f is not None]
    return which[keep], [foils[k] for k in keep]


def probe_table(reps: dict[str, tuple[np.ndarray, np.ndarray]], rows: tuple, seed: int) -> dict[str, dict[str, float]]:
    """binding_probe of each representation (train features, test features), on the same rows."""
    (r_tr, q_tr, y_tr), (r_te, q_te, y_te) = rows
    return {name: binding_probe(x_tr[r_tr], q_tr, y_tr, x_te[r_te], q_te, y_te, seed)
            for name, (x_tr, x_te) in reps.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="the repository root holding the pipeline's outputs")
    ap.add_argument("--students", nargs="+", default=["student", "student_triplet"],
                    help="student checkpoints models/<name>.pt")
    ap.add_argument("--captions", type=int, default=2000, help="test captions for the foil accuracy")
    ap.add_argument("--control-captions", type=int, default=5000, help="train captions fitting the text-only control")
    ap.add_argument("--probe-train", type=int, default=1000, help="train images (and captions) fitting each probe")
    ap.add_argument("--probe-test", type=int, default=500, help="test images (and captions) scoring each probe")
    ap.add_argument("--key", default="shape", choices=ATTRIBUTES, help="the attribute naming the object")
    ap.add_argument("--target", default="colour", choices=ATTRIBUTES, help="the attribute a probe predicts for it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()

    root = args.root
    needed = [root / "data" / "scenes.jsonl", root / "features" / "train" / "manifest.json",
              root / "features" / "test" / "manifest.json", root / "models" / "teacher.pt",
              root / "params.yaml", *(root / "models" / f"{s}.pt" for s in args.students)]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise DataError(f"binding_probe: missing pipeline output(s) {', '.join(missing)} "
                        "(scenes data only; run the pipeline first)")
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    temperature = params.load("distill", root / "params.yaml").teacher_temperature
    train, test = open_split(root / "features", "train"), open_split(root / "features", "test")
    recs = {s.path.name: scene_records(root / "data" / "scenes.jsonl", s.image_ids) for s in (train, test)}
    models = {"teacher": load_model(root / "models" / "teacher.pt", args.device, kind="alignment")}
    models.update({s: load_model(root / "models" / f"{s}.pt", args.device, kind=STUDENTS) for s in args.students})
    students = {s: models[s] for s in args.students}
    report: dict[str, Any] = {"teacher_temperature": temperature}

    # Foil accuracy: caption vs foil against the caption's own image, texts encoded end to end.
    caps, foils = foil_pairs(test, recs["test"], args.captions, args.seed)
    backbone = store_backbones(test, args.device)[0]
    own_img = np.asarray(test.caption_image)[caps]
    cap_txt = raw_text_batches(backbone, [test.captions[j] for j in caps])
    foil_txt = raw_text_batches(backbone, [f.text for f in foils])
    kinds = np.array([f.kind for f in foils])
    acc: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        pos = pair_scores(model, test, own_img, cap_txt, args.device)
        neg = pair_scores(model, test, own_img, foil_txt, args.device)
        acc[name] = {"all": foil_accuracy(pos, neg),
                     **{k: foil_accuracy(pos[kinds == k], neg[kinds == k]) for k in SCENE_KINDS}}
    ctrl_caps, ctrl_foils = foil_pairs(train, recs["train"], args.control_captions, args.seed)
    train_pairs = [(train.captions[j], f.text) for j, f in zip(ctrl_caps, ctrl_foils)]
    test_pairs = [(test.captions[j], f.text) for j, f in zip(caps, foils)]
    pos, neg = text_only_scores(train_pairs, test_pairs)
    acc["text_only"] = {"all": foil_accuracy(pos, neg),
                        **{k: foil_accuracy(pos[kinds == k], neg[kinds == k]) for k in SCENE_KINDS}}
    detectable = text_detectable(acc["text_only"]["all"], len(test_pairs))
    report["foils"] = {"test_captions": int(len(caps)), "sampled": int(min(args.captions, test.n_captions)),
                       "per_kind": {k: int((kinds == k).sum()) for k in SCENE_KINDS},
                       "control_train_pairs": len(train_pairs), "accuracy": acc,
                       "text_detectable": detectable}

    # Linear probes on frozen embeddings.
    rng = np.random.default_rng(args.seed)
    img_idx = {"train": sample(train.n_images, args.probe_train, rng), "test": sample(test.n_images, args.probe_test, rng)}
    cap_idx = {"train": sample(train.n_captions, args.probe_train, rng), "test": sample(test.n_captions, args.probe_test, rng)}
    stores = {"train": train, "test": test}
    image_rows = tuple(image_probe_rows([recs[s][i] for i in img_idx[s]], args.key, args.target) for s in stores)
    caption_rows = tuple(caption_probe_rows([stores[s].captions[j] for j in cap_idx[s]], args.key, args.target)
                         for s in stores)
    reps_img = {name: tuple(encode_images(m, stores[s], img_idx[s]) for s in stores) for name, m in students.items()}
    reps_img["teacher_mean_tokens"] = tuple(mean_tokens(models["teacher"], stores[s], "image", img_idx[s], args.device)
                                            for s in stores)
    reps_img["bag_of_attributes"] = tuple(bag_features([recs[s][i]["objects"] for i in img_idx[s]]) for s in stores)
    reps_cap = {name: tuple(encode_texts(m, stores[s], cap_idx[s]) for s in stores) for name, m in students.items()}
    reps_cap["teacher_mean_tokens"] = tuple(mean_tokens(models["teacher"], stores[s], "caption", cap_idx[s], args.device)
                                            for s in stores)
    reps_cap["bag_of_attributes"] = tuple(bag_features([caption_descs(stores[s].captions[j]) for j in cap_idx[s]])
                                          for s in stores)
    report["probes"] = {"key": args.key, "target": args.target,
                        "image": probe_table(reps_img, image_rows, args.seed),
                        "caption": probe_table(reps_cap, caption_rows, args.seed)}

    # The teacher's target over each caption's family.
    families = [r["family"] for r in recs["test"]]
    scores, own = family_scores(models["teacher"], test, families, caps, args.device)
    report["family_target"] = target_entropy(scores, own, temperature)

    print(f"binding diagnostics under {root.resolve()}: {len(caps)} of {report['foils']['sampled']} sampled test "
          f"captions have a verified foil ({', '.join(f'{k} {v}' for k, v in report['foils']['per_kind'].items())})")
    print(f"\nfoil accuracy (%, chance 50)  {'all':>6}" + "".join(f"{k:>18}" for k in SCENE_KINDS))
    for name, row in acc.items():
        label = "text only (no image)" if name == "text_only" else name
        print(f"  {label:<27} {row['all']:6.1f}" + "".join(f"{row[k]:18.1f}" for k in SCENE_KINDS))
    print("  text-only control: " + ("FAR ABOVE 50: the foils are readable from the text alone (SugarCrepe caveat); "
                                    "foil accuracy above it is not evidence of binding" if detectable else
                                    f"near 50 ({len(train_pairs)} train pairs): the foils are not readable from the text alone"))
    print(f"\nlinear probes: the {args.target} of the object of a given {args.key} (% test; n train / test rows)")
    print(f"  {'':<8}{'representation':<22}{'probe':>7}{'shuffled':>10}{'majority':>10}{'rows':>14}")
    for side in ("image", "caption"):
        for name, r in report["probes"][side].items():
            print(f"  {side:<8}{name:<22}{r['accuracy']:7.1f}{r['shuffled']:10.1f}{r['majority']:10.1f}"
                  f"{int(r['n_train']):>8} / {int(r['n_test'])}")
    ft = report["family_target"]
    print(f"\nteacher target over a family (softmax at distill.teacher_temperature {temperature:g}): entropy "
          f"{ft['entropy']:.3f} nats (uniform {ft['uniform_entropy']:.3f}), mass on the own image {ft['p_own']:.3f}, "
          f"family R@1 {ft['family_r1']:.1f}% over {ft['family_size']:.2f} images")
    if args.out:
        write_json(args.out, report)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    run_stage(main)         # a user error (missing or broken outputs): one line, exit 2
