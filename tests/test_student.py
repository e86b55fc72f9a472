"""The student: distillation loss, matching head, encode API, distillation training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aladin.retrieval.encode import encode_images, encode_texts
from aladin.training.losses import distillation_loss
from aladin.models.factory import build_model
from aladin.models.matching import MatchingHead
from aladin.store import Batch, StoreWriter, open_split


def naive_distillation_loss(s, t, ts, tt, positive=None):
    """Explicit loops: per row, then per column, softmax + cross-entropy over the kept entries."""
    b_img, b_cap = len(s), len(s[0])
    keep = [[positive is None or i == j or not positive[i][j] for j in range(b_cap)] for i in range(b_img)]

    def ce(pairs):  # pairs: list of (student, teacher) scores of one list
        zs = sum(math.exp(x / ts) for x, _ in pairs)
        zt = sum(math.exp(y / tt) for _, y in pairs)
        return -sum(math.exp(y / tt) / zt * math.log(math.exp(x / ts) / zs) for x, y in pairs)

    rows = [ce([(s[i][j], t[i][j]) for j in range(b_cap) if keep[i][j]]) for i in range(b_img)]
    cols = [ce([(s[i][j], t[i][j]) for i in range(b_img) if keep[i][j]]) for j in range(b_cap)]
    return sum(rows) / b_img + sum(cols) / b_cap


def test_distillation_loss_matches_naive_loops():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(4, 4, generator=g) * 2 - 1
    t = torch.rand(4, 4, generator=g) * 5
    positive = torch.eye(4, dtype=torch.bool)
    positive[0, 2] = positive[2, 0] = True                 # rows 0 and 2: two captions of one image
    for mask in (None, positive):
        got = distillation_loss(s, t, 0.2, 0.7, positive_mask=mask)
        want = naive_distillation_loss(s.tolist(), t.tolist(), 0.2, 0.7,
                                       None if mask is None else mask.tolist())
        assert got.item() == pytest.approx(want, rel=1e-5)


def test_distillation_loss_closed_form_2x2():
    # Two entries per list: softmax([x, y] / T)[0] = sigmoid((x - y) / T).
    s = torch.tensor([[0.9, 0.1], [0.3, 0.5]])
    t = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    ts, tt = 0.25, 1.5
    sig = lambda z: 1 / (1 + math.exp(-z))
    def ce2(x, y, a, b):  # student (x, y), teacher (a, b)
        p = sig((a - b) / tt)
        return -(p * math.log(sig((x - y) / ts)) + (1 - p) * math.log(sig((y - x) / ts)))
    rows = ce2(0.9, 0.1, 2.0, 1.0) + ce2(0.5, 0.3, 3.0, 0.0)
    cols = ce2(0.9, 0.3, 2.0, 0.0) + ce2(0.5, 0.1, 3.0, 1.0)
    assert distillation_loss(s, t, ts, tt).item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_lower_temperature_sharpens_the_student_distribution():
    # Row 0 of the student's scores favours caption 0 by 0.8: p(correct) = sigmoid(0.8 / T). With
    # a one-hot teacher the loss is -log p per list, 4 lists averaged per direction: -2 log p.
    s = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    one_hot = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    probs = []
    for temp in (1.0, 0.5, 0.1):
        p = math.exp(-distillation_loss(s, one_hot, temp, 1.0).item() / 2)
        assert p == pytest.approx(1 / (1 + math.exp(-0.8 / temp)), rel=1e-5)
        probs.append(p)
    assert probs[0] < probs[1] < probs[2]


def test_zero_gradient_when_distributions_agree():
    t = torch.tensor([[3.0, 1.0, 0.5], [0.2, 2.5, 1.0], [1.0, 0.0, 4.0]])
    ts, tt = 0.1, 2.0
    s = (t * ts / tt).requires_grad_(True)                 # s / ts == t / tt: same distributions
    distillation_loss(s, t, ts, tt).backward()
    assert s.grad.abs().max().item() < 1e-6
    s2 = (t * ts / tt + torch.tensor([[0.1, 0.0, 0.0]] * 3)).requires_grad_(True)
    distillation_loss(s2, t, ts, tt).backward()
    assert s2.grad.abs().max().item() > 1e-3


def test_teacher_is_detached():
    t = torch.rand(3, 3, requires_grad=True)
    s = torch.rand(3, 3, requires_grad=True)
    distillation_loss(s, t, 0.1, 1.0).backward()
    assert t.grad is None and s.grad is not None


def test_loss_is_minimised_by_the_teachers_ranking():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(5, 5, generator=g) * 3
    ts, tt = 0.5, 1.0
    # Free student scores, optimised from noise, end up ordering every row and column as the
    # teacher does (the minimiser is t * ts / tt up to a constant).
    s = torch.randn(5, 5, generator=g).requires_grad_(True)
    opt = torch.optim.LBFGS([s], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = distillation_loss(s, t, ts, tt)
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.equal(s.argsort(dim=1), t.argsort(dim=1))
    assert torch.equal(s.argsort(dim=0), t.argsort(dim=0))
    # Any move away from the teacher-proportional scores costs loss; so does a wrong ranking.
    best = distillation_loss(t * ts / tt, t, ts, tt)
    for _ in range(20):
        assert distillation_loss(t * ts / tt + 0.1 * torch.randn(5, 5, generator=g), t, ts, tt) > best
    swapped = (t * ts / tt).clone()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    assert distillation_loss(swapped, t, ts, tt) > best


def test_positive_mask_drops_duplicates_from_the_lists():
    t = torch.tensor([[2.0, 5.0, 0.0], [5.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    s = torch.zeros(3, 3, requires_grad=True)
    positive = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    distillation_loss(s, t, 0.1, 1.0, positive_mask=positive).backward()
    # The off-diagonal positives get no gradient: they are in no distribution.
    assert s.grad[0, 1] == 0 and s.grad[1, 0] == 0
    assert torch.isfinite(s.grad).all()


# --- the model and the encode API ---------------------------------------------------------------

D_IMG, D_TXT = 12, 10


def random_batch(b: int = 5, r: int = 4, length: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    region_counts = torch.randint(1, r + 1, (b,), generator=g)
    token_counts = torch.randint(1, length + 1, (b,), generator=g)
    return Batch(regions=torch.randn(b, r, D_IMG, generator=g), boxes=torch.rand(b, r, 6, generator=g),
                 region_mask=torch.arange(r)[None] < region_counts[:, None],
                 tokens=torch.randn(b, length, D_TXT, generator=g),
                 token_mask=torch.arange(length)[None] < token_counts[:, None],
                 image_index=torch.arange(b), caption_index=torch.arange(b))


def small_student(**kw) -> MatchingHead:
    cfg = dict(d_model=16, layers=1, heads=2, ff=32, dim=8) | kw
    return build_model("matching", cfg, D_IMG, D_TXT)


@pytest.mark.parametrize("pooling", ["first", "mean", "attention"])
@pytest.mark.parametrize("shared", [True, False])
def test_student_shapes_normalised_and_padding_invariant(pooling, shared):
    torch.manual_seed(0)
    model = small_student(pooling=pooling, shared=shared).eval()
    batch = random_batch()
    img, txt = model.embed_images(batch), model.embed_texts(batch)
    assert img.shape == (5, 8) and txt.shape == (5, 8)
    assert torch.allclose(img.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(model(batch), img @ txt.T, atol=1e-6)
    # Padding is ignored: garbage past the valid positions changes nothing.
    noisy = Batch(**batch.__dict__)
    noisy.regions = batch.regions.masked_fill(~batch.region_mask[..., None], 7.0)
    noisy.tokens = batch.tokens.masked_fill(~batch.token_mask[..., None], -3.0)
    assert torch.allclose(model.embed_images(noisy), img, atol=1e-5)
    assert torch.allclose(model.embed_texts(noisy), txt, atol=1e-5)


def test_shared_tower_has_fewer_parameters():
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(small_student(shared=True)) < n(small_student(shared=False))


def write_store(path, n_images: int, per_image: int = 2, seed: int = 0, r: int = 4, length: int = 5,
                noise: float = 0.3):
    """A learnable tiny store: image i and its captions derive from one latent vector z_i.

    The latent -> feature projections are the same for every seed (one "world"), so stores of
    different seeds are train / val splits of one distribution.
    """
    world = np.random.default_rng(1234)
    a, b = world.normal(size=(6, D_IMG)), world.normal(size=(6, D_TXT))
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_images, 6))
    regions = (z[:, None] @ a)[:, 0][:, None] + noise * rng.normal(size=(n_images, r, D_IMG))
    region_counts = rng.integers(2, r + 1, n_images)
    n_cap = n_images * per_image
    cap_img = np.repeat(np.arange(n_images), per_image)
    tokens = (z[cap_img] @ b)[:, None] + noise * rng.normal(size=(n_cap, length, D_TXT))
    token_counts = rng.integers(2, length + 1, n_cap)
    for i, c in enumerate(region_counts):
        regions[i, c:] = 0
    for j, c in enumerate(token_counts):
        tokens[j, c:] = 0
    with StoreWriter(path, n_images, r, D_IMG, n_cap, length, D_TXT) as w:
        w.write_images(0, regions.astype(np.float16), rng.random((n_images, r, 6)).astype(np.float32),
                       region_counts)
        w.write_captions(0, tokens.astype(np.float16), token_counts)
        w.finish([f"im{i}" for i in range(n_images)], [f"im{i}.png" for i in range(n_images)],
                 [f"caption {j}" for j in range(n_cap)], cap_img, {})
    return open_split(path.parent, path.name)


def test_encode_batched_equals_unbatched_and_restores_mode(tmp_path):
    torch.manual_seed(0)
    store = write_store(tmp_path / "s", n_images=11, per_image=3)
    model = small_student()
    model.train()
    img_all = encode_images(model, store, batch_size=64)
    img_small = encode_images(model, store, batch_size=4)
    txt_all = encode_texts(model, store, batch_size=64)
    txt_small = encode_texts(model, store, batch_size=5)
    assert model.training                                  # restored after encoding in eval mode
    assert img_all.shape == (11, 8) and txt_all.shape == (33, 8)
    assert img_all.dtype == np.float32 and txt_all.dtype == np.float32
    np.testing.assert_allclose(img_small, img_all, atol=1e-5)
    np.testing.assert_allclose(txt_small, txt_all, atol=1e-5)
    # A subset by indices, and a raw Batch, give the same rows.
    np.testing.assert_allclose(encode_texts(model, store, indices=[7, 2]), txt_all[[7, 2]], atol=1e-5)
    np.testing.assert_allclose(encode_images(model, store.image_batch([3, 4])), img_all[3:5], atol=1e-5)


# --- distillation training ----------------------------------------------------------------------

from aladin.evaluation.validation import student_metrics  # noqa: E402
from aladin.training.distillation import CachedTeacher, LossConfig, OnlineTeacher, StudentLoss  # noqa: E402
from aladin.training.loop import OptimConfig, fit  # noqa: E402


def oracle_teacher(store, seed: int = 0):
    """Teacher scores from the latent vectors the tiny store was generated from (a perfect teacher)."""
    z = torch.as_tensor(np.random.default_rng(seed).normal(size=(store.n_images, 6)), dtype=torch.float32)
    cap_img = torch.as_tensor(store.caption_image)
    return lambda batch: 3.0 * z[batch.image_index] @ z[cap_img[batch.caption_index]].T


def test_cached_teacher_scores_equal_online_scores(tmp_path):
    torch.manual_seed(0)
    store = write_store(tmp_path / "s", n_images=9, per_image=3)
    teacher = build_model("alignment", {"d": 8, "heads": 2, "ff": 16}, D_IMG, D_TXT).eval()
    cached, online = CachedTeacher(teacher, store, batch_size=4), OnlineTeacher(teacher)
    batch = store.pair_batch([5, 0, 26, 13, 14])
    torch.testing.assert_close(cached(batch), online(batch), atol=2e-3, rtol=0)


@pytest.mark.parametrize("mode", ["distill", "distill+triplet", "triplet"])
def test_short_run_improves_on_the_untrained_student(tmp_path, mode):
    train = write_store(tmp_path / "train", n_images=48, per_image=2, seed=0)
    val = write_store(tmp_path / "val", n_images=24, per_image=2, seed=1)
    torch.manual_seed(0)
    student = small_student(dropout=0.0)
    before = student_metrics(student, val)["rsum"]
    loss_fn = StudentLoss(LossConfig(mode=mode, temperature=0.1), oracle_teacher(train))
    batch = train.pair_batch(np.arange(16))
    loss, logs = loss_fn(student, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(logs) == {"distill": {"distill", "distill_floor"},
                         "distill+triplet": {"distill", "distill_floor", "triplet"}, "triplet": set()}[mode]
    result = fit(student, loss_fn, train, lambda m: student_metrics(m, val),
                 OptimConfig(lr_decay_epochs=[], epochs=6, batch_size=16, lr=3e-3), seed=0, device="cpu", checkpoint_dir=None,
                 on_epoch_start=loss_fn.on_epoch_start)
    assert result.best_metrics["rsum"] > before + 100


def test_stage_writes_outputs_and_baseline_needs_no_teacher(tmp_path, monkeypatch):
    import json
    import sys

    import pandas as pd

    from tests._params import write_params

    from aladin.models.factory import load_model, save_checkpoint

    write_store(tmp_path / "features" / "train", n_images=16, per_image=2, seed=0)
    write_store(tmp_path / "features" / "val", n_images=8, per_image=2, seed=1)
    teacher_cfg = {"d": 8, "heads": 2, "ff": 16}
    save_checkpoint(tmp_path / "models" / "teacher.pt", build_model("alignment", teacher_cfg, D_IMG, D_TXT),
                    "alignment", teacher_cfg)
    write_params(tmp_path, {"seed": 0, "tracking": {"enabled": False},
                            "distill": {"codebook": {"codes": 8},
                                        "model": {"d_model": 16, "layers": 1, "heads": 2, "ff": 16, "dim": 8},
                                        "optim": {"epochs": 2, "batch_size": 8}, "device": "cpu"}})
    from stages import distill as stage
    monkeypatch.chdir(tmp_path)

    monkeypatch.setattr(sys, "argv", ["distill.py"])
    stage.main()
    metrics = json.loads((tmp_path / "metrics" / "student.json").read_text())
    assert metrics["mode"] == "distill" and 0 <= metrics["val"]["rsum"] <= 600
    assert len(pd.read_csv(tmp_path / "plots" / "student_history.csv")) == 2
    student = load_model(tmp_path / "models" / "student.pt", kind="codebook")    # the default student
    assert encode_images(student, open_split(tmp_path / "features", "val")).shape == (8, 8)

    (tmp_path / "models" / "teacher.pt").unlink()
    monkeypatch.setattr(sys, "argv", ["distill.py", "--triplet-baseline"])
    stage.main()
    assert json.loads((tmp_path / "metrics" / "student_triplet.json").read_text())["mode"] == "triplet"
    assert (tmp_path / "models" / "student_triplet.pt").is_file()


def test_triplet_warmup_sums_all_negatives_then_takes_the_hardest():
    from aladin.training.losses import positive_mask, triplet_loss

    torch.manual_seed(0)
    model, batch = small_student(dropout=0.0), random_batch()
    loss_fn = StudentLoss(LossConfig(mode="triplet", warmup_epochs=1), None)
    scores, positive = model(batch), positive_mask(batch)
    loss_fn.on_epoch_start(0)
    assert loss_fn(model, batch)[0].item() == pytest.approx(triplet_loss(scores, positive, 0.2, False).item())
    loss_fn.on_epoch_start(1)
    assert loss_fn(model, batch)[0].item() == pytest.approx(triplet_loss(scores, positive, 0.2, True).item())


def small_teacher():
    from aladin.params import AlignmentConfig

    return build_model("alignment", AlignmentConfig(d=12, layers=1, heads=2, ff=24, dropout=0.3), D_IMG, D_TXT)


def test_student_on_teacher_tokens_keeps_the_encoders_frozen_and_round_trips(tmp_path):
    from aladin.models.factory import load_model, save_checkpoint

    torch.manual_seed(0)
    teacher = small_teacher()
    student = build_model("matching", dict(d_model=16, layers=1, heads=2, ff=32, dim=8, inputs="teacher_tokens"),
                          D_IMG, D_TXT, token_encoder=teacher)
    assert student.region_proj.in_features == 12 and student.token_proj.in_features == 12
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    student.train()
    assert not teacher.training                               # its dropout stays off while the student trains
    batch = random_batch()
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    student(batch).sum().backward()
    opt.step()
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    # The student reads the teacher's token embeddings, not the raw features.
    student.eval()
    tokens, _ = teacher.embed_texts(batch)
    expected = student.txt_tower(student.txt_norm(student.token_proj(tokens)), batch.token_mask)
    assert torch.allclose(student.embed_texts(batch), expected, atol=1e-6)
    save_checkpoint(tmp_path / "s.pt", student, "matching", student.cfg)
    loaded = load_model(tmp_path / "s.pt", kind="matching")
    assert loaded.token_encoder is not None
    assert torch.allclose(loaded(batch), student(batch), atol=1e-6)
    with pytest.raises(ValueError, match="token_encoder"):
        build_model("matching", dict(inputs="teacher_tokens"), D_IMG, D_TXT)
