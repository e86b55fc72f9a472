"""Teacher: pooled alignment scores, chunked scoring, triplet loss, model and checkpoints."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aladin.errors import DataError
from aladin.training.losses import positive_mask, triplet_loss
from aladin.models.factory import build_model, load_model, save_checkpoint
from aladin.models.scoring import POOLINGS, alignment_scores, paired_alignment_scores, score_embeddings, word_mask
from aladin.retrieval.store_scores import score_store
from aladin.store import Batch

from _stores import random_store

torch.set_num_threads(1)
T = 0.1


def random_set(n: int, length: int, d: int, counts: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, length, d, generator=g), dim=-1)
    mask = torch.arange(length)[None] < torch.tensor(counts)[:, None]
    return x, mask


def naive_score(img, img_mask, cap, cap_mask, pooling):
    """Plain Python loops over pairs, words and valid regions."""
    out = torch.zeros(img.shape[0], cap.shape[0])
    for i in range(img.shape[0]):
        regions = [img[i, r] for r in range(img.shape[1]) if img_mask[i, r]]
        for j in range(cap.shape[0]):
            words = [cap[j, w] for w in range(cap.shape[1]) if cap_mask[j, w]]
            per_word = []
            for w in words:
                sims = [float(r @ w) for r in regions]
                if pooling == "lse":
                    per_word.append(T * math.log(sum(math.exp(s / T) for s in sims)))
                else:
                    per_word.append(max(sims))
            out[i, j] = sum(per_word) / (len(words) if pooling == "mravgw" else 1)
    return out


@pytest.fixture(scope="module")
def sets():
    img, img_mask = random_set(5, 4, 8, [4, 1, 3, 2, 4], seed=0)
    cap, cap_mask = random_set(7, 6, 8, [6, 1, 2, 5, 3, 6, 4], seed=1)
    return img, img_mask, cap, cap_mask


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_matches_naive_loop(sets, pooling):
    img, img_mask, cap, cap_mask = sets
    expected = naive_score(img, img_mask, cap, cap_mask, pooling)
    torch.testing.assert_close(alignment_scores(img, img_mask, cap, cap_mask, pooling, T, "all"), expected)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("words", ["all", "no_special"])
def test_paired_scores_are_the_diagonal(sets, pooling, words):
    img, img_mask, cap, cap_mask = sets
    pick = torch.tensor([3, 0, 4, 1, 2])                                  # pair b: image b, caption pick[b]
    full = alignment_scores(img, img_mask, cap, cap_mask, pooling, T, words)
    torch.testing.assert_close(paired_alignment_scores(img, img_mask, cap[pick], cap_mask[pick], pooling, T, words),
                               full[torch.arange(5), pick])


def test_padding_content_is_ignored(sets):
    """Padded regions never win the max (even with huge similarity); padded words add nothing."""
    img, img_mask, cap, cap_mask = sets
    img2 = torch.where(img_mask[..., None], img, 100.0 * cap[:1, :1])
    cap2 = torch.where(cap_mask[..., None], cap, 100.0 * img[:1, :1])
    for pooling in POOLINGS:
        torch.testing.assert_close(alignment_scores(img2, img_mask, cap2, cap_mask, pooling, T, "all"),
                                   alignment_scores(img, img_mask, cap, cap_mask, pooling, T, "all"))


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("chunk_mb", [1e-5, 1e-3, 100.0])
def test_chunked_equals_unchunked(sets, pooling, chunk_mb):
    img, img_mask, cap, cap_mask = sets
    full = alignment_scores(img, img_mask, cap, cap_mask, pooling, T, "all")
    # Two caption groups with their own padding, written to shuffled columns.
    short, rest = torch.tensor([1, 2]), torch.tensor([0, 3, 4, 5, 6])   # captions 1, 2 have <= 2 words
    groups = [(cap[short, :2], cap_mask[short, :2]), (cap[rest], cap_mask[rest])]
    perm = torch.tensor([4, 0, 6, 2, 1, 5, 3])                          # caption k -> column perm[k]
    out = score_embeddings(img, img_mask, groups, pooling, T, chunk_mb, words="all",
                           columns=[perm[short], perm[rest]], progress=False)
    torch.testing.assert_close(out[:, perm], full)


def test_triplet_loss_uses_hardest_negative_and_margin():
    s = torch.tensor([[0.9, 0.5, 0.8],
                      [0.1, 0.6, 0.0],
                      [0.2, 0.3, 0.7]], requires_grad=True)
    loss = triplet_loss(s, torch.eye(3, dtype=torch.bool), margin=0.2)
    # i2t hinges (row-wise hardest caption): [.2-.9+.8]=.1, [.2-.6+.1]=0, [.2-.7+.3]=0
    # t2i hinges (column-wise hardest image): [.2-.9+.2]=0, [.2-.6+.5]=.1, [.2-.7+.8]=.3
    assert loss.item() == pytest.approx((0.1 + 0.1 + 0.3) / 3)
    loss.backward()
    # Only the hardest negatives get gradient: (0,2) as caption of 0 and as image of 2, (0,1).
    assert s.grad[0, 2] > 0 and s.grad[0, 1] > 0 and s.grad[2, 0] == 0 and s.grad[1, 0] == 0
    assert triplet_loss(s, torch.eye(3, dtype=torch.bool), margin=0.0).item() == pytest.approx(0.1 / 3)


def test_duplicate_images_in_batch_are_not_negatives():
    batch = Batch(image_index=torch.tensor([7, 7, 3]))
    pos = positive_mask(batch)
    assert pos.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    s = torch.tensor([[1.0, 1.0, 0.0],
                      [1.0, 1.0, 0.0],
                      [0.0, 0.0, 1.0]])
    assert triplet_loss(s, pos).item() == 0.0                     # would be 0.2 with (0,1) as negative
    assert triplet_loss(s, torch.eye(3, dtype=torch.bool)).item() > 0


def make_model(pooling="mrsw", dropout=0.0):
    torch.manual_seed(0)
    return build_model("alignment", {"d": 8, "layers": 2, "heads": 2, "ff": 16, "dropout": dropout,
                                     "pooling": pooling}, 10, 9).eval()


def test_embeddings_are_unit_norm_and_independent_of_batch_padding(tmp_path):
    store, model = random_store(tmp_path / "s"), make_model()
    with torch.no_grad():
        emb, mask = model.embed_images(store.image_batch(np.arange(6)))
        for i in range(6):
            alone, alone_mask = model.embed_images(store.image_batch([i]))
            n = int(store.region_counts[i])
            assert alone_mask.sum() == n == mask[i].sum()
            torch.testing.assert_close(alone[0, :n], emb[i, :n])
        txt, txt_mask = model.embed_texts(store.caption_batch(np.arange(12)))
    assert emb.shape == (6, 5, 8) and txt.shape[0] == 12
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(6, 5))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(txt.shape[:2]))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_score_store_matches_direct_scoring(tmp_path, pooling):
    store, model = random_store(tmp_path / "s"), make_model(pooling)
    with torch.no_grad():
        direct = model.score(*model.embed_images(store.image_batch(np.arange(6))),
                             *model.embed_texts(store.caption_batch(np.arange(12))))
    torch.testing.assert_close(score_store(model, store, "cpu", chunk_mb=1e-4, batch_size=4, progress=False), direct)
    img_idx, cap_idx = np.array([4, 1]), np.array([11, 0, 5])
    sub = score_store(model, store, "cpu", image_idx=img_idx, caption_idx=cap_idx, progress=False)
    torch.testing.assert_close(sub, direct[img_idx][:, cap_idx])


def test_in_batch_forward_is_differentiable_and_equals_no_grad_scores(tmp_path):
    store, model = random_store(tmp_path / "s"), make_model()
    batch = store.pair_batch(np.arange(8))
    scores = model(batch)
    scores.sum().backward()
    assert model.text_encoder.proj.weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(model(batch), scores.detach())


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    store, model = random_store(tmp_path / "s"), make_model("lse")
    save_checkpoint(tmp_path / "m.pt", model, "alignment", model.cfg, {"val": {"rsum": 1.0}})
    loaded = load_model(tmp_path / "m.pt", "cpu", kind="alignment")
    assert not loaded.training and loaded.cfg == model.cfg
    batch = store.pair_batch(np.arange(12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch))
    with pytest.raises(DataError, match="m.pt.*'matching'"):
        load_model(tmp_path / "m.pt", kind="matching")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(DataError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["d_txt"] = 5
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(DataError, match="mismatch.pt"):
        load_model(tmp_path / "mismatch.pt")


def test_threaded_scoring_matches_and_restores_thread_count(sets):
    img, img_mask, cap, cap_mask = sets
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for pooling in POOLINGS:
            out = score_embeddings(img, img_mask, [(cap, cap_mask)], pooling, T, 1e-5, progress=False, words="all")
            torch.testing.assert_close(out, alignment_scores(img, img_mask, cap, cap_mask, pooling, T, "all"))
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_all_negatives_triplet_loss_matches_naive_sum():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 5, generator=g)
    pos = positive_mask(Batch(image_index=torch.tensor([0, 0, 1, 2, 2])))
    total, n_pos = 0.0, 0
    for i in range(5):
        for j in range(5):
            if pos[i, j]:
                n_pos += 1
                total += sum(max(0.0, 0.2 - s[i, j] + s[i, k]) for k in range(5) if not pos[i, k])
                total += sum(max(0.0, 0.2 - s[i, j] + s[k, j]) for k in range(5) if not pos[k, j])
    assert triplet_loss(s, pos, 0.2, hardest=False).item() == pytest.approx(float(total) / n_pos, rel=1e-5)


def naive_words_score(img, img_mask, cap, counts, pooling, first, stop):
    """MrSw-style pooling over word positions first..count-1-stop of each caption (plain loops)."""
    out = torch.zeros(img.shape[0], cap.shape[0])
    for i in range(img.shape[0]):
        regions = [img[i, r] for r in range(img.shape[1]) if img_mask[i, r]]
        for j in range(cap.shape[0]):
            per_word = []
            for w in range(first, counts[j] - stop):
                sims = [float(r @ cap[j, w]) for r in regions]
                per_word.append(T * math.log(sum(math.exp(s / T) for s in sims)) if pooling == "lse" else max(sims))
            out[i, j] = sum(per_word) / (max(len(per_word), 1) if pooling == "mravgw" else 1)
    return out


@pytest.mark.parametrize("pooling", POOLINGS)
def test_word_sets_match_naive_loops(sets, pooling):
    img, img_mask, cap, cap_mask = sets
    counts = cap_mask.sum(dim=1).tolist()                    # [6, 1, 2, 5, 3, 6, 4]: prefix masks
    # all: words 0..len-1, today's behaviour; no_special: words 1..len-2 (a caption of <= 2 tokens: none).
    torch.testing.assert_close(alignment_scores(img, img_mask, cap, cap_mask, pooling, T, "all"),
                               naive_words_score(img, img_mask, cap, counts, pooling, 0, 0))
    no_special = alignment_scores(img, img_mask, cap, cap_mask, pooling, T, "no_special")
    torch.testing.assert_close(no_special, naive_words_score(img, img_mask, cap, counts, pooling, 1, 1))
    assert (no_special[:, [1, 2]] == 0).all()
    # The chunked scorer drops the same words, also from a group cropped to its own length.
    short, rest = torch.tensor([1, 2]), torch.tensor([0, 3, 4, 5, 6])
    groups = [(cap[short, :2], cap_mask[short, :2]), (cap[rest], cap_mask[rest])]
    out = score_embeddings(img, img_mask, groups, pooling, T, 1e-5, columns=[short, rest], progress=False,
                           words="no_special")
    torch.testing.assert_close(out, no_special)


def test_no_special_drops_the_last_valid_token_not_the_last_position():
    mask = torch.tensor([[True, True, True, True, False, False],
                         [True, True, True, True, True, True],
                         [True, True, False, False, False, False]])
    assert word_mask(mask, "no_special").tolist() == [[False, True, True, False, False, False],
                                                      [False, True, True, True, True, False],
                                                      [False] * 6]
    assert word_mask(mask, "all") is mask


def test_model_word_set_reaches_every_scoring_path_and_old_checkpoints_load(tmp_path):
    store, special = random_store(tmp_path / "s", length=8), make_model()
    model = build_model("alignment", {**vars(special.cfg), "words": "all"}, 10, 9).eval()
    model.load_state_dict(special.state_dict())
    assert special.cfg.words == "no_special"                               # the default
    with torch.no_grad():
        img = special.embed_images(store.image_batch(np.arange(6)))
        txt = special.embed_texts(store.caption_batch(np.arange(12)))
        expected = alignment_scores(*img, *txt, "mrsw", T, "no_special")
        torch.testing.assert_close(special.score(*img, *txt), expected)
        torch.testing.assert_close(score_store(special, store, "cpu", chunk_mb=1e-4, batch_size=4,
                                               progress=False), expected)
        assert not torch.allclose(model.score(*img, *txt), expected)
    grad_img = img[0].clone().requires_grad_(True)
    torch.testing.assert_close(special.score(grad_img, img[1], *txt).detach(), expected)
    # A checkpoint written before the field existed loads with the behaviour it was trained with ("all").
    save_checkpoint(tmp_path / "m.pt", model, "alignment", model.cfg)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    del ckpt["config"]["words"]
    torch.save(ckpt, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt", kind="alignment").cfg.words == "all"
