"""Training losses. Every loss takes an (B_img, B_cap) score matrix of one batch.

Row i of a pair batch holds image i and caption i (a positive pair); two captions of the same
image may share a batch, so positives are decided by image identity, never by position.
"""
from __future__ import annotations

import torch

from ..store import Batch


def positive_mask(batch: Batch) -> torch.Tensor:
    """(B, B) bool: image row i and caption column j describe the same image."""
    return batch.image_index[:, None] == batch.image_index[None, :]


def triplet_loss(scores: torch.Tensor, positive: torch.Tensor, margin: float = 0.2,
                 hardest: bool = True) -> torch.Tensor:
    """Hinge triplet loss over in-batch negatives, both directions (image -> text, text -> image).

    hardest=True (VSE++ max violation): for every positive pair (i, j),
    ``[margin - s(i,j) + max_{j' neg} s(i,j')]_+ + [margin - s(i,j) + max_{i' neg} s(i',j)]_+``.
    hardest=False sums the hinges over all negatives instead (VSE0): the warm-up, since max
    violation from a random start tends to collapse all embeddings to one point.
    Positives are never negatives. The result is the *mean* over the batch's positive pairs, so
    its scale (and the useful lr / grad_clip) does not depend on the batch size.
    """
    if not hardest:
        neg = (~positive).float()
        # i2t[i, j] = sum_j' [m - s(i,j) + s(i,j')]_+ over negatives j'; t2i likewise over images i'.
        i2t = ((margin - scores[:, :, None] + scores[:, None, :]).clamp(min=0) * neg[:, None, :]).sum(2)
        t2i = ((margin - scores[None, :, :] + scores[:, None, :]).clamp(min=0) * neg[:, None, :]).sum(0)
        return (i2t + t2i)[positive].mean()
    neg_inf = torch.finfo(scores.dtype).min
    negatives = scores.masked_fill(positive, neg_inf)
    hardest_cap = negatives.max(dim=1, keepdim=True).values     # (B_img, 1): per image, over captions
    hardest_img = negatives.max(dim=0, keepdim=True).values     # (1, B_cap): per caption, over images
    cost = (margin - scores + hardest_cap).clamp(min=0) + (margin - scores + hardest_img).clamp(min=0)
    return cost[positive].mean()


class TripletSchedule:
    """The VSE++ schedule of :func:`triplet_loss`: the hinge summed over all negatives for
    `warmup_epochs` epochs, then the hardest negative. :meth:`on_epoch_start` goes to ``fit``."""

    def __init__(self, margin: float, warmup_epochs: int) -> None:
        self.margin, self.warmup_epochs = margin, warmup_epochs
        self.hardest = warmup_epochs == 0

    def on_epoch_start(self, epoch: int) -> None:
        self.hardest = epoch >= self.warmup_epochs

    def loss(self, scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        return triplet_loss(scores, positive, self.margin, self.hardest)

    def __call__(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """loss_fn(model, pair batch) for ``fit``: `model(batch)` is the (B, B) score matrix."""
        return self.loss(model(batch), positive_mask(batch)), {}


def distillation_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                      student_temperature: float, teacher_temperature: float,
                      positive_mask: torch.Tensor | None = None, pairs: int | None = None) -> torch.Tensor:
    """ListNet-style listwise distillation of a pair batch, image lists and caption lists added.

    Scores are (N_img, N_cap) whose leading (pairs, pairs) block is the pair batch (image i and
    caption i a positive pair; `pairs` None = all rows and columns, a square batch). The lists
    are the first `pairs` rows (each pair's image over every caption) and the first `pairs`
    columns (each pair's caption over every image); rows and columns past them are extra
    candidates that only join those lists (:mod:`aladin.training.lists`).

    Each list of the teacher's scores (detached, divided by `teacher_temperature`) gives a target
    distribution by softmax; the student's cosine scores divided by `student_temperature` (the
    reference's scale 6.0 is a temperature of 1/6) give the predicted one; the loss is their
    cross-entropy, averaged over the image lists, plus the same over the caption lists. Lower
    temperatures give sharper distributions. The gradient is zero exactly when both agree.

    Duplicates: when two captions of one image share a batch, the image appears twice (identical
    rows for the teacher, and the captions are each other's positives). With `positive_mask`
    (N_img, N_cap), every positive other than the list's own pair is dropped from both
    distributions, so each list ranks its own pair against true negatives only, as the triplet
    loss does, and a duplicate never counts as a competing target. Without it, duplicates stay
    in the lists as targets (both copies share the target mass, consistently for both models).
    """
    t = teacher_scores.detach() / teacher_temperature
    s = student_scores / student_temperature
    drop = None
    if positive_mask is not None:
        eye = torch.eye(*s.shape, dtype=torch.bool, device=s.device)
        drop = positive_mask & ~eye
        t, s = t.masked_fill(drop, float("-inf")), s.masked_fill(drop, float("-inf"))

    def cross_entropy(s: torch.Tensor, t: torch.Tensor, drop: torch.Tensor | None, dim: int) -> torch.Tensor:
        log_q = s.log_softmax(dim)
        if drop is not None:  # p = 0 there; avoid 0 * -inf
            log_q = log_q.masked_fill(drop, 0.0)
        return -(t.softmax(dim) * log_q).sum(dim).mean()

    n = pairs
    rows = cross_entropy(s[:n], t[:n], None if drop is None else drop[:n], 1)
    cols = cross_entropy(s[:, :n], t[:, :n], None if drop is None else drop[:, :n], 0)
    return rows + cols


def multi_positive_loss(scores: torch.Tensor, truth: torch.Tensor, temperature: float,
                        pairs: int | None = None) -> torch.Tensor:
    """Labelled contrastive term over the same lists as :func:`distillation_loss` (InfoNCE with
    multi-positive targets): each list's target is uniform over the items labelled true of its
    query (`truth` (N_img, N_cap) bool, True at least at the list's own pair), so an item that is
    also a true match (a caption true of a look-alike scene) is pulled up, never pushed away."""
    s = scores / temperature

    def cross_entropy(s: torch.Tensor, truth: torch.Tensor, dim: int) -> torch.Tensor:
        target = truth.float() / truth.sum(dim, keepdim=True)
        return -(target * s.log_softmax(dim)).sum(dim).mean()

    n = pairs
    return cross_entropy(s[:n], truth[:n], 1) + cross_entropy(s[:, :n], truth[:, :n], 0)


def multi_positive_list_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Cross-encoder: -log of the softmax mass on the positives of each candidate list, averaged over
    the lists that hold a negative. logits (Q, W), -inf at empty slots; positive (Q, W) bool."""
    negative = ~positive & torch.isfinite(logits)
    per_list = logits.logsumexp(1) - logits.masked_fill(~positive, float("-inf")).logsumexp(1)
    has = negative.any(1)
    return per_list[has].sum() / has.sum().clamp_min(1)
