"""The codebook student: MrSw with the caption's words quantised to codes, as a dot product."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aladin.errors import ConfigError
from aladin.models.factory import STUDENTS, build_model, load_model, save_checkpoint
from aladin.models.scoring import word_mask
from aladin.retrieval.encode import encode_images, encode_texts
from tests.test_student import D_IMG, D_TXT, random_batch, small_teacher, write_store


def codebook(codes: int, teacher: torch.nn.Module | None = None):
    teacher = small_teacher().eval() if teacher is None else teacher
    return build_model("codebook", {"codes": codes}, D_IMG, D_TXT, token_encoder=teacher)


def naive_scores(regions, region_mask, words, words_mask, codes):
    """Loops: every word replaced by its nearest code, then sum over words of max over valid regions."""
    out = torch.zeros(len(regions), len(words))
    for i in range(len(regions)):
        for j in range(len(words)):
            for w, keep in zip(words[j], words_mask[j]):
                if keep:
                    c = codes[int(torch.argmax(codes @ w))]
                    out[i, j] += max(float(r @ c) for r, valid in zip(regions[i], region_mask[i]) if valid)
    return out


def test_scores_equal_naive_loops():
    torch.manual_seed(0)
    head = codebook(7).eval()
    batch = random_batch(b=5, r=4, length=6)
    with torch.no_grad():
        regions, region_mask = head.token_encoder.embed_images(batch)
        words, mask = head.token_encoder.embed_texts(batch)
        want = naive_scores(regions, region_mask, words, word_mask(mask, head.token_encoder.cfg.words),
                            head.unit_codes())
        torch.testing.assert_close(head(batch), want, atol=1e-5, rtol=1e-5)


def test_codes_equal_to_the_words_give_the_teachers_scores():
    # Each word its own code: the quantisation is exact and the dot product is the teacher's MrSw.
    torch.manual_seed(1)
    teacher = small_teacher().eval()
    batch = random_batch(b=6, r=4, length=6, seed=3)
    with torch.no_grad():
        words, mask = teacher.embed_texts(batch)
        distinct = words[word_mask(mask, teacher.cfg.words)]
        head = codebook(len(distinct), teacher).eval()
        head.codes.copy_(distinct)
        torch.testing.assert_close(head(batch), teacher(batch), atol=1e-5, rtol=1e-5)


def test_caption_vectors_count_words_and_padding_changes_nothing():
    torch.manual_seed(2)
    head = codebook(5).eval()
    batch = random_batch(b=4, r=4, length=6, seed=5)
    with torch.no_grad():
        psi = head.embed_texts(batch)
        n_words = word_mask(batch.token_mask, head.token_encoder.cfg.words).sum(1).float()
        torch.testing.assert_close(psi.sum(1), n_words)
        # One image alone (no padding beside longer ones) gets the same vector.
        alone = dataclasses.replace(batch, regions=batch.regions[:1], boxes=batch.boxes[:1],
                                    region_mask=batch.region_mask[:1])
        count = int(batch.region_mask[0].sum())
        trimmed = dataclasses.replace(alone, regions=alone.regions[:, :count], boxes=alone.boxes[:, :count],
                                      region_mask=alone.region_mask[:, :count])
        torch.testing.assert_close(head.embed_images(trimmed), head.embed_images(batch)[:1], atol=1e-6, rtol=0)


def test_fit_codes_is_seeded_unit_norm_and_needs_enough_words(tmp_path):
    store = write_store(tmp_path / "s", n_images=20, per_image=3, length=6)
    torch.manual_seed(0)
    teacher = small_teacher().eval()
    a, b, c = codebook(6, teacher), codebook(6, teacher), codebook(6, teacher)
    a.fit_codes(store, seed=0)
    b.fit_codes(store, seed=0)
    c.fit_codes(store, seed=1)
    assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)
    torch.testing.assert_close(a.codes.norm(dim=1), torch.ones(6))
    with pytest.raises(ConfigError, match="distill.codebook.codes"):
        codebook(10_000, teacher).fit_codes(store, seed=0)


def test_only_the_codes_train_and_the_checkpoint_round_trips(tmp_path):
    torch.manual_seed(3)
    teacher = small_teacher()
    head = codebook(6, teacher)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    head.train()
    assert not teacher.training
    codes = head.codes.detach().clone()
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=1e-1)
    head(random_batch()).sum().backward()
    opt.step()
    assert [n for n, p in head.named_parameters() if p.requires_grad] == ["codes"]
    assert not torch.equal(head.codes, codes)
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    save_checkpoint(tmp_path / "s.pt", head, "codebook", head.cfg)
    loaded = load_model(tmp_path / "s.pt", kind=STUDENTS)
    batch = random_batch(seed=9)
    head.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), head(batch))


def test_encode_gives_the_codebook_dimension(tmp_path):
    store = write_store(tmp_path / "s", n_images=7, per_image=2)
    head = codebook(9).eval()
    img, txt = encode_images(head, store), encode_texts(head, store)
    assert img.shape == (7, 9) and txt.shape == (14, 9)
    np.testing.assert_allclose(txt.sum(1) % 1, 0)                     # counts of words


def test_params_choose_the_student_and_refuse_a_codebook_without_teacher():
    from tests._params import section

    cfg = section("distill")
    assert cfg.student == "codebook" and cfg.kind == "codebook" and cfg.head_config == cfg.codebook
    assert cfg.student_optim.lr == cfg.codebook.lr != cfg.optim.lr
    assert cfg.student_optim.epochs == cfg.optim.epochs
    other = section("distill", student="transformer")
    assert other.kind == "matching" and other.head_config == other.model and other.student_optim == other.optim
    with pytest.raises(ConfigError, match="distill.student"):
        section("distill", mode="triplet", lists={"hard": 0, "pool": 16, "siblings": False})
