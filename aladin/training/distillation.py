"""ALADIN stage 2: train the matching head (student) on the frozen alignment head's (teacher's)
in-batch scores.

Modes: ``distill`` (listwise distillation only, the paper's method), ``distill+triplet`` (plus
``triplet_weight`` x the student's own hinge triplet loss) and ``triplet`` (no teacher: the
"without distillation" student the paper compares against).

The teacher's in-batch scores come either from its token embeddings of the whole training split,
computed once and looked up per batch (:class:`CachedTeacher`), or from a teacher forward pass per
batch (:class:`OnlineTeacher`); both give the same scores, they differ only in time and memory.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .lists import WiderLists
from .losses import TripletSchedule, distillation_loss, multi_positive_loss, positive_mask
from ..models.factory import build_model
from ..params import DistillParams, LossConfig
from ..store import Batch, FeatureStore

log = logging.getLogger("aladin")

TeacherScores = Callable[[Batch], torch.Tensor]     # pair batch -> (B, B) teacher scores


def reads_teacher_tokens(cfg: DistillParams) -> bool:
    """Whether the student reads the frozen teacher encoders' tokens (the codebook always does)."""
    return cfg.student == "codebook" or cfg.model.inputs == "teacher_tokens"


def build_student(cfg: DistillParams, train: FeatureStore, teacher: nn.Module | None, seed: int) -> nn.Module:
    """The untrained student `cfg` describes; the codebook's codes fitted to `train`'s teacher word vectors."""
    encoder = {"token_encoder": teacher} if reads_teacher_tokens(cfg) else {}
    student = build_model(cfg.kind, cfg.head_config, train.manifest["d_img"], train.manifest["d_txt"], **encoder)
    if cfg.student == "codebook":
        student.fit_codes(train, seed)
    return student


class Timed:
    """Wraps a teacher scorer and accumulates the seconds it takes (for the logged timing)."""

    def __init__(self, scores: TeacherScores, setup_seconds: float = 0.0) -> None:
        self.scores, self.setup_seconds, self.seconds, self.calls = scores, setup_seconds, 0.0, 0

    def __call__(self, batch: Batch) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.scores(batch)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


class OnlineTeacher:
    """Teacher forward pass on every batch (eval mode, no gradient)."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.teacher(batch)


class CachedTeacher:
    """Teacher token embeddings of every image and caption of `store`, computed once (float16).

    Per batch only the region x word scoring runs. Memory: (N_img x R + N_cap x L) x d x 2 bytes
    (COCO-sized train split at d=128: about 0.2 GB).
    """

    def __init__(self, teacher: nn.Module, store: FeatureStore, batch_size: int = 256) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        device = next(teacher.parameters()).device
        self.images = self._embed(teacher.embed_images, store.image_batch, store.n_images,
                                  int(np.max(store.region_counts)), batch_size, device, "teacher images")
        self.texts = self._embed(teacher.embed_texts, store.caption_batch, store.n_captions,
                                 int(np.max(store.token_counts)), batch_size, device, "teacher texts")

    @staticmethod
    @torch.no_grad()
    def _embed(embed: Callable, fetch: Callable[[np.ndarray], Batch], n: int, width: int,
               batch_size: int, device: torch.device, desc: str) -> torch.Tensor:
        out = None
        chunks = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
        for idx in tqdm(chunks, desc=desc, disable=len(chunks) < 20):
            emb, _ = embed(fetch(idx).to(device))                       # (b, w <= width, d)
            if out is None:
                out = torch.zeros(n, width, emb.shape[-1], dtype=torch.float16, device=device)
            out[idx[0]:idx[-1] + 1, :emb.shape[1]] = emb.half()
        return out

    @torch.no_grad()
    def __call__(self, batch: Batch) -> torch.Tensor:
        # The batch is cropped to its longest item; crop the cached rows the same way.
        r, length = batch.region_mask.shape[1], batch.token_mask.shape[1]
        img = self.images[batch.image_index.to(self.images.device), :r].float()
        txt = self.texts[batch.caption_index.to(self.texts.device), :length].float()
        return self.teacher.score(img, batch.region_mask, txt, batch.token_mask)


def teacher_scorer(teacher: nn.Module, store: FeatureStore, cached: bool) -> Timed:
    """The teacher's in-batch scorer, timed (the cache build counts as setup)."""
    t0 = time.perf_counter()
    scores = CachedTeacher(teacher, store) if cached else OnlineTeacher(teacher)
    return Timed(scores, setup_seconds=time.perf_counter() - t0)


class StudentLoss:
    """loss_fn(student, pair batch) -> (loss, logs) for :func:`aladin.training.loop.fit`.

    Pass :meth:`on_epoch_start` to fit too: the triplet term follows the teacher's warm-up
    schedule (:class:`aladin.training.losses.TripletSchedule`). With `lists`, each batch is
    widened by its pairs' teacher candidates and the labelled contrastive term (weight
    ``cfg.contrastive_weight``) joins the loss (:mod:`aladin.training.lists`).
    """

    def __init__(self, cfg: LossConfig, teacher: TeacherScores | None, lists: WiderLists | None = None) -> None:
        if cfg.mode != "triplet" and teacher is None:
            raise ValueError(f"mode {cfg.mode!r} needs a teacher")
        if cfg.contrastive_weight and (lists is None or lists.truth is None):
            raise ValueError("contrastive_weight > 0 needs labelled lists")
        self.cfg, self.teacher, self.lists = cfg, teacher, lists
        self.triplet = TripletSchedule(cfg.margin, cfg.warmup_epochs)
        self.on_epoch_start = self.triplet.on_epoch_start

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, pairs, truth = self.cfg, len(batch.caption_index), None
        positive = positive_mask(batch)
        if self.lists is not None:
            # Candidates drawn from torch's RNG, which fit reseeds every epoch: a resumed run redraws the same.
            rng = np.random.default_rng(int(torch.randint(2**62, ())))
            batch, positive, truth = self.lists.widen(batch, rng)
        scores = model(batch)                                          # (N_img, N_cap) cosines
        if cfg.mode == "triplet":
            return self.triplet.loss(scores[:pairs, :pairs], positive[:pairs, :pairs]), {}
        teacher = self.teacher(batch)
        loss = distillation_loss(scores, teacher, cfg.temperature, cfg.teacher_temperature, positive, pairs)
        # The loss's floor: the teacher's own target entropy on these lists (reached only when the
        # student reproduces the teacher's distributions).
        floor = distillation_loss(teacher, teacher, cfg.teacher_temperature, cfg.teacher_temperature, positive, pairs)
        logs = {"distill": loss.item(), "distill_floor": floor.item()}
        if cfg.mode == "distill+triplet":
            triplet = self.triplet.loss(scores[:pairs, :pairs], positive[:pairs, :pairs])
            loss = loss + cfg.triplet_weight * triplet
            logs["triplet"] = triplet.item()
        if cfg.contrastive_weight:
            labelled = multi_positive_loss(scores, truth, cfg.temperature, pairs)
            loss = loss + cfg.contrastive_weight * labelled
            logs["contrastive"] = labelled.item()
        return loss, logs

    def summary(self, model: nn.Module) -> dict[str, object]:
        """Entries of metrics/student.json beside the val metrics: the mode and the teacher's time."""
        out: dict[str, object] = {"mode": self.cfg.mode}
        if isinstance(self.teacher, Timed):
            out["teacher_seconds"] = round(self.teacher.setup_seconds + self.teacher.seconds, 1)
        return out
