"""The transfer set: extra scenes the student is distilled on, never a val or test scene."""
from __future__ import annotations

import numpy as np
import torch

from aladin.data import generate as gen
from aladin.data.generate import generate
from aladin.data.scenes import scene_from_record
from aladin.store import ConcatStore, open_distillation_set
from tests._stores import random_store
from tests.test_data import tiny


def test_transfer_scenes_are_extra_and_never_val_or_test(tmp_path, monkeypatch):
    real = gen.sample_split
    held = {}

    def sample_split(rng, split, n, family_size):
        scenes = real(rng, split, n, family_size)
        if split in ("val", "test"):
            held[split] = scenes
        if split == "transfer":                       # plant copies of a val and a test scene
            scenes = [held["val"][0], *scenes, held["test"][3]]
        return scenes

    monkeypatch.setattr(gen, "sample_split", sample_split)
    images, records = generate(tmp_path, tiny(n_transfer=12, seed=3))
    key = lambda r: scene_from_record(r).key()                  # noqa: E731
    by_split = {}
    for im, rec in zip(images, records):
        by_split.setdefault(im.split, []).append(rec)
    assert len(by_split["transfer"]) == 12                       # the two planted copies dropped
    assert not {key(r) for r in by_split["transfer"]} & {key(r) for s in ("val", "test") for r in by_split[s]}
    other = {s: [im.captions for im in images if im.split == s] for s in ("train", "val", "test")}
    plain, _ = generate(tmp_path / "plain", tiny(seed=3))
    assert other == {s: [im.captions for im in plain if im.split == s] for s in ("train", "val", "test")}


def test_concat_store_batches_are_the_parts_batches(tmp_path):
    a = random_store(tmp_path / "train", n_img=5, cpi=2, seed=0)
    b = random_store(tmp_path / "transfer", n_img=4, cpi=2, seed=1)
    both = ConcatStore([a, b])
    assert (both.n_images, both.n_captions) == (9, 18)
    np.testing.assert_array_equal(both.caption_image, np.r_[a.caption_image, b.caption_image + 5])
    assert both.captions == a.captions + b.captions
    mixed = both.pair_batch([17, 0, 11, 3])                      # transfer, train, transfer, train
    for row, (store, local) in enumerate([(b, 7), (a, 0), (b, 1), (a, 3)]):
        one = store.pair_batch([local])
        n_r, n_t = int(one.region_mask.sum()), int(one.token_mask.sum())
        torch.testing.assert_close(mixed.regions[row, :n_r], one.regions[0, :n_r])
        torch.testing.assert_close(mixed.boxes[row, :n_r], one.boxes[0, :n_r])
        torch.testing.assert_close(mixed.tokens[row, :n_t], one.tokens[0, :n_t])
        assert int(mixed.region_mask[row].sum()) == n_r and int(mixed.token_mask[row].sum()) == n_t


def test_distillation_set_is_train_alone_without_a_transfer_split(tmp_path):
    random_store(tmp_path / "train", n_img=5, cpi=2, seed=0)
    assert not isinstance(open_distillation_set(tmp_path), ConcatStore)
    random_store(tmp_path / "transfer", n_img=3, cpi=2, seed=1)
    assert open_distillation_set(tmp_path).n_images == 8
