"""Teacher-neighbour batches: every pair once per epoch, groups drawn from the anchor's neighbours."""
import numpy as np
import torch

from aladin.training.batching import neighbour_order, teacher_candidates
from aladin.models.factory import build_model
from aladin.params import AlignmentConfig
from aladin.retrieval.store_scores import score_store
from aladin.store import open_split
from tests._stores import random_store


def _families(n_img: int, size: int) -> np.ndarray:
    """(n_img, size - 1): each image's family members (images i // size * size + 0..size-1) but itself."""
    fam = np.arange(n_img)[:, None] // size * size + np.arange(size)[None, :]
    return np.array([[j for j in row if j != i] for i, row in enumerate(fam)])


def test_every_caption_once_and_groups_are_neighbour_families():
    n_img, cpi, group = 40, 5, 4
    cap_img = np.repeat(np.arange(n_img), cpi)
    neighbours = _families(n_img, group)[cap_img]                    # pool = group - 1: the whole family
    order = neighbour_order(cap_img, neighbours, group, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(n_img * cpi))
    # Walk the order group by group: a group is its anchor plus one caption of each other family
    # member while they have captions left, so the first groups of an epoch are whole families.
    first = order[:group]
    assert len({cap_img[c] // group for c in first}) == 1 and len({cap_img[c] for c in first}) == group
    fam_of = cap_img[order] // group
    same_family_next = np.mean(fam_of[1:] == fam_of[:-1])
    assert same_family_next > 0.6                                     # uniform order: about 3/199
    again = neighbour_order(cap_img, neighbours, group, np.random.default_rng(0))
    np.testing.assert_array_equal(order, again)                      # the epoch generator fixes it


def test_group_of_one_is_a_permutation():
    cap_img = np.repeat(np.arange(10), 2)
    order = neighbour_order(cap_img, np.zeros((20, 3), np.int64), 1, np.random.default_rng(3))
    assert sorted(order.tolist()) == list(range(20))


def test_teacher_candidates_are_its_best_wrong_items_both_ways(tmp_path):
    random_store(tmp_path / "s", n_img=9, cpi=2)
    store = open_split(tmp_path, "s")
    torch.manual_seed(0)
    teacher = build_model("alignment", AlignmentConfig(d=16, layers=1, heads=2, ff=32, dropout=0.0),
                          store.manifest["d_img"], store.manifest["d_txt"]).eval()
    cand = teacher_candidates(teacher, store, pool=3, device="cpu")
    scores = score_store(teacher, store, "cpu", progress=False).numpy()   # (N_img, N_cap)
    assert cand.images.shape == (store.n_captions, 3) and cand.captions.shape == (store.n_images, 3)
    chunked = teacher_candidates(teacher, store, pool=3, device="cpu", chunk=4)   # lists merged over chunks
    np.testing.assert_array_equal(chunked.images, cand.images)
    np.testing.assert_allclose(np.take_along_axis(scores, chunked.captions, 1),   # equal up to float
                               np.take_along_axis(scores, cand.captions, 1), rtol=1e-5)   # ties' order
    for j in range(store.n_captions):                  # naive: sort every caption's column
        own = store.caption_image[j]
        ranked = [i for i in np.argsort(-scores[:, j], kind="stable") if i != own]
        assert own not in cand.images[j]
        np.testing.assert_allclose(scores[cand.images[j], j], scores[ranked[:3], j], rtol=1e-6)
    for i in range(store.n_images):                    # ... and every image's row
        ranked = [j for j in np.argsort(-scores[i], kind="stable") if store.caption_image[j] != i]
        assert all(store.caption_image[j] != i for j in cand.captions[i])
        np.testing.assert_allclose(scores[i, cand.captions[i]], scores[i, ranked[:3]], rtol=1e-6)
