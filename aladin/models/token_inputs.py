"""What a head reads: the backbone features as stored, or the frozen teacher's contextual tokens.

With ``inputs: teacher_tokens`` the teacher's two encoders sit inside the head (and its
checkpoint, as the ``token_encoder`` component), frozen and in eval mode whatever the head's mode:
in ALADIN the heads sit on the backbone that the alignment stage fine-tuned.
"""
from __future__ import annotations

import torch
from torch import nn

from ..store import Batch


class TokenInputs(nn.Module):
    """Base of the heads that can read either input (the student, the cross-encoder)."""

    token_encoder: nn.Module | None

    def init_token_inputs(self, inputs: str, token_encoder: nn.Module | None, d_img: int,
                          d_txt: int) -> tuple[int, int]:
        """Set up the inputs; returns the (region, word) vector widths the head projects from."""
        self.token_encoder = None
        if inputs != "teacher_tokens":
            return d_img, d_txt
        if token_encoder is None:
            raise ValueError(f"{type(self).__name__} with inputs 'teacher_tokens' needs the teacher (token_encoder)")
        self.token_encoder = token_encoder.eval().requires_grad_(False)
        return token_encoder.cfg.d, token_encoder.cfg.d

    def train(self, mode: bool = True) -> "TokenInputs":
        super().train(mode)
        if self.token_encoder is not None:
            self.token_encoder.eval()
        return self

    def region_inputs(self, batch: Batch) -> torch.Tensor:
        """(B, R, d) region vectors: stored features or the teacher's region tokens."""
        return batch.regions if self.token_encoder is None else self.token_encoder.embed_images(batch)[0]

    def word_inputs(self, batch: Batch) -> torch.Tensor:
        """(B, L, d) word vectors: stored features or the teacher's word tokens."""
        return batch.tokens if self.token_encoder is None else self.token_encoder.embed_texts(batch)[0]
