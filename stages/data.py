"""Stage `data`: render the compositional scenes dataset into data/ and score non-learned baselines,
or (data.source karpathy / precomp / vinvl_tsv) convert a real dataset's files into data/dataset.json.

Outputs: data/dataset.json (manifest), data/scenes.jsonl (scene records), data/images/<split>/*.png,
metrics/data.json (dataset statistics; bag-of-words and colour-histogram retrieval on the test split).
"""
import logging

from aladin import params
from aladin.data.generate import generate, write_scenes
from aladin.data.manifest import write_dataset
from aladin.datasets import dataset_stats, prepare
from aladin.evaluation.dataset import dataset_metrics
from aladin.evaluation.metrics import check_protocols
from aladin.io import atomic_path, write_json
from aladin.runtime import run_stage

log = logging.getLogger("aladin")


def main() -> None:
    cfg = params.load("data")
    if cfg.source != "scenes":      # files the user downloaded (docs/COCO.md)
        with atomic_path("data", is_dir=True) as out:
            name, images = prepare(cfg.source, getattr(cfg, cfg.source), cfg.captions_per_image, out)
            write_dataset(out / "dataset.json", name, cfg.source, cfg.captions_per_image, images)
        stats = dataset_stats(images)
        write_json("metrics/data.json", stats)
        log.info("data: %s, %s images", name, stats["images"])
        return
    check_protocols(cfg.n_test)    # a size without the COCO protocols is told before rendering
    with atomic_path("data", is_dir=True) as out:
        images, records = generate(out, cfg)
        write_dataset(out / "dataset.json", "scenes", cfg.source, cfg.captions_per_image, images)
        write_scenes(out / "scenes.jsonl", records)
        metrics = dataset_metrics(images, records, cfg.captions_per_image)
    write_json("metrics/data.json", metrics)
    full = next(iter(metrics["baselines"]["bow_tfidf"]))
    log.info("data: %s images; rsum on %s: bag-of-words %.1f, colour histogram %.1f, chance %.1f",
             metrics["images"], full, *(metrics["baselines"][b][full]["rsum"]
                                        for b in ("bow_tfidf", "colour_histogram", "chance")))


if __name__ == "__main__":
    run_stage(main)
