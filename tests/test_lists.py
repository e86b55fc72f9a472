"""Wider distillation lists and the labelled contrastive term: checked against naive loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aladin.training.batching import Candidates
from aladin.training.lists import PairTruth, WiderLists, draw_candidates, family_siblings
from aladin.training.losses import distillation_loss, multi_positive_loss
from tests._stores import random_store


def _ce(pairs: list[tuple[float, float]], ts: float, tt: float) -> float:
    """Cross-entropy of softmax(teacher / tt) against softmax(student / ts) over one list."""
    zs = sum(math.exp(x / ts) for x, _ in pairs)
    zt = sum(math.exp(y / tt) for _, y in pairs)
    return -sum(math.exp(y / tt) / zt * math.log(math.exp(x / ts) / zs) for x, y in pairs)


def naive_wide_distillation(s, t, ts, tt, positive, pairs):
    """Pair b's image list: every caption but the other positives of its image; its caption list:
    every image but the other positives of its caption. Averaged over pairs, both kinds added."""
    n_img, n_cap = len(s), len(s[0])
    rows = [_ce([(s[b][j], t[b][j]) for j in range(n_cap) if j == b or not positive[b][j]], ts, tt)
            for b in range(pairs)]
    cols = [_ce([(s[i][b], t[i][b]) for i in range(n_img) if i == b or not positive[i][b]], ts, tt)
            for b in range(pairs)]
    return sum(rows) / pairs + sum(cols) / pairs


def test_wide_distillation_loss_matches_naive_loops():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(7, 6, generator=g) * 2 - 1          # 3 pairs + 4 extra images, + 3 extra captions
    t = torch.rand(7, 6, generator=g) * 4
    positive = torch.zeros(7, 6, dtype=torch.bool)
    positive[[0, 1, 2], [0, 1, 2]] = True
    positive[0, 2] = positive[2, 0] = positive[2, 2] = True   # pairs 0 and 2: two captions of one image
    positive[5, 1] = True                                      # an extra image equal to pair 1's image
    positive[1, 4] = True                                      # an extra caption of pair 1's image
    got = distillation_loss(s, t, 0.3, 0.6, positive, pairs=3)
    want = naive_wide_distillation(s.tolist(), t.tolist(), 0.3, 0.6, positive.tolist(), 3)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_square_batch_is_the_wide_loss_without_extras():
    g = torch.Generator().manual_seed(2)
    s, t = torch.rand(5, 5, generator=g), torch.rand(5, 5, generator=g)
    positive = torch.eye(5, dtype=torch.bool)
    assert distillation_loss(s, t, 0.1, 0.2, positive, pairs=5).item() == pytest.approx(
        distillation_loss(s, t, 0.1, 0.2, positive).item(), rel=1e-6)


def naive_multi_positive(s, truth, temp, pairs):
    def ce(scores, labels):
        z = sum(math.exp(x / temp) for x in scores)
        k = sum(labels)
        return -sum(lab / k * math.log(math.exp(x / temp) / z) for x, lab in zip(scores, labels))
    rows = [ce(s[b], truth[b]) for b in range(pairs)]
    cols = [ce([r[b] for r in s], [r[b] for r in truth]) for b in range(pairs)]
    return sum(rows) / pairs + sum(cols) / pairs


def test_multi_positive_loss_matches_naive_loops():
    g = torch.Generator().manual_seed(3)
    s = torch.rand(5, 6, generator=g) * 2 - 1
    truth = torch.zeros(5, 6, dtype=torch.bool)
    truth[[0, 1, 2], [0, 1, 2]] = True
    truth[0, 4] = truth[3, 1] = truth[2, 5] = True       # captions also true of other scenes
    got = multi_positive_loss(s, truth, 0.2, pairs=3)
    assert got.item() == pytest.approx(naive_multi_positive(s.tolist(), truth.tolist(), 0.2, 3), rel=1e-5)


def test_a_sibling_the_caption_is_true_of_is_pulled_up_never_pushed_away():
    s = torch.zeros(3, 3, requires_grad=True)            # every score equal: each item has 1/3 of the mass
    truth = torch.eye(3, dtype=torch.bool)
    truth[1, 0] = True                                    # caption 0 is also true of image 1 (a look-alike)
    multi_positive_loss(s, truth, 0.1).backward()
    assert s.grad[1, 0] < 0                               # raising its score lowers the loss
    assert s.grad[2, 0] > 0                               # a false image is pushed away


def test_candidates_are_distinct_members_of_each_pool_and_seeded():
    pool = np.arange(40).reshape(4, 10)                   # query q's pool: 10q .. 10q + 9
    queries = np.array([3, 0, 3])
    a = draw_candidates(pool, queries, 4, np.random.default_rng(0)).reshape(3, 4)
    for q, row in zip(queries, a):
        assert len(set(row)) == 4 and set(row) <= set(pool[q])
    np.testing.assert_array_equal(a.ravel(), draw_candidates(pool, queries, 4, np.random.default_rng(0)))
    assert draw_candidates(pool, queries, 0, np.random.default_rng(0)).size == 0


def test_pair_truth_is_the_parser_or_the_same_image():
    caption_image = np.array([0, 0, 1, 1, 2, 2])
    parser = np.zeros((3, 6), bool)
    parser[2, 0] = True                                   # caption 0 is also true of scene 2
    images, captions = np.array([0, 2]), np.array([0, 4, 3])
    same_only = PairTruth(caption_image)(images, captions)
    assert same_only.tolist() == [[True, False, False], [False, True, False]]
    assert PairTruth(caption_image, parser)(images, captions).tolist() == [[True, False, False], [True, True, False]]


def test_widened_batch_keeps_the_pairs_first_and_labels_every_cell(tmp_path):
    store = random_store(tmp_path / "s", n_img=6, cpi=2)
    pool_images = np.array([[(store.caption_image[c] + k) % 6 for k in (1, 2, 3)] for c in range(12)])
    pool_caps = np.array([[(2 * i + k) % 12 for k in (2, 3, 4)] for i in range(6)])
    lists = WiderLists(store, Candidates(images=pool_images, captions=pool_caps), hard=2,
                       truth=PairTruth(store.caption_image))
    batch = store.pair_batch([0, 5, 7])
    wide, same, truth = lists.widen(batch, np.random.default_rng(0))
    assert wide.image_index[:3].tolist() == batch.image_index.tolist()
    assert wide.caption_index[:3].tolist() == batch.caption_index.tolist()
    assert len(wide.image_index) == len(wide.caption_index) == 3 + 3 * 2
    for b, c in enumerate([0, 5, 7]):                     # pair b's extra images come from its caption's pool
        assert set(wide.image_index[3 + 2 * b:5 + 2 * b].tolist()) <= set(pool_images[c])
    cap_img = store.caption_image[wide.caption_index.numpy()]
    np.testing.assert_array_equal(same.numpy(), wide.image_index.numpy()[:, None] == cap_img[None, :])
    np.testing.assert_array_equal(truth.numpy(), same.numpy())
    # the features of every row are those of its store item
    torch.testing.assert_close(wide.regions[4, :int(store.region_counts[wide.image_index[4]])],
                               torch.from_numpy(np.asarray(store.regions[int(wide.image_index[4])],
                                                           dtype=np.float32))[:int(store.region_counts[wide.image_index[4]])])


def test_family_siblings_are_the_other_members():
    sib = family_siblings(["a", "b", "a", "a", "c", "b"])
    assert [sorted(s[s >= 0].tolist()) for s in sib] == [[2, 3], [5], [0, 3], [0, 2], [], [1]]


def test_siblings_join_the_images_and_a_true_sibling_is_labelled_true(tmp_path):
    store = random_store(tmp_path / "s", n_img=6, cpi=2)
    siblings = family_siblings(["f0", "f0", "f0", "f1", "f1", "f2"])
    parser = np.zeros((6, 12), bool)
    parser[1, 0] = True                                   # caption 0 (of image 0) is also true of its sibling 1
    lists = WiderLists(store, None, 0, PairTruth(store.caption_image, parser), siblings)
    wide, same, truth = lists.widen(store.pair_batch([0, 6]), np.random.default_rng(0))
    assert wide.image_index.tolist() == [0, 3, 1, 2, 4]   # the pairs' images, then 0's and 3's siblings
    assert wide.caption_index.tolist() == [0, 6]
    assert truth[:, 0].tolist() == [True, False, True, False, False]
    assert not same[2, 0] and truth[2, 0]                 # a negative for distillation's duplicates rule,
                                                          # a positive for the labelled term


def test_wide_labelled_lists_train_the_student(tmp_path):
    from aladin.evaluation.validation import student_metrics
    from aladin.training.distillation import LossConfig, StudentLoss
    from aladin.training.loop import OptimConfig, fit
    from tests.test_student import oracle_teacher, small_student, write_store

    train = write_store(tmp_path / "train", n_images=48, per_image=2, seed=0)
    val = write_store(tmp_path / "val", n_images=24, per_image=2, seed=1)
    rng = np.random.default_rng(0)
    pool = Candidates(images=np.stack([rng.permutation(np.setdiff1d(np.arange(48), [i]))[:6]
                                       for i in train.caption_image]),
                      captions=np.stack([rng.permutation(np.flatnonzero(train.caption_image != i))[:6]
                                         for i in range(48)]))
    lists = WiderLists(train, pool, 2, PairTruth(train.caption_image))
    torch.manual_seed(0)
    student = small_student(dropout=0.0)
    before = student_metrics(student, val)["rsum"]
    loss_fn = StudentLoss(LossConfig(temperature=0.1, contrastive_weight=1.0), oracle_teacher(train), lists)
    loss, logs = loss_fn(student, train.pair_batch(np.arange(16)))
    assert set(logs) == {"distill", "distill_floor", "contrastive"} and torch.isfinite(loss)
    result = fit(student, loss_fn, train, lambda m: student_metrics(m, val),
                 OptimConfig(lr_decay_epochs=[], epochs=6, batch_size=16, lr=3e-3), seed=0, device="cpu",
                 checkpoint_dir=None, on_epoch_start=loss_fn.on_epoch_start)
    assert result.best_metrics["rsum"] > before + 100
