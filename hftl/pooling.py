"""Sentence pooling that suits the checkpoint (`model.pooling`).

A BERT-style classifier sits on the pooler (dense + tanh over [CLS]). Checkpoints trained for
sentence embeddings (sentence-transformers, e.g. all-MiniLM-L6-v2) never trained that pooler: their
embedding is the attention-masked mean of the token states, declared in `1_Pooling/config.json`.
With a frozen backbone, a head on the untrained pooler learns next to nothing; on the mean it learns
what logistic regression on the embeddings learns. `auto` reads that file; `mean`/`cls` force it.

The pooler module is swapped for a parameter-free one; `config.hftl_pooling` records the choice so
`hftl.load_model` re-applies it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from hftl.errors import HftlError

MODES = ("auto", "default", "mean", "cls")


class TokenPooler(nn.Module):
    """Mean of the non-padding token states (or the first token). Reads the attention mask the backbone
    was called with, which a forward pre-hook on the backbone stores here."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.attention_mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            return hidden_states[:, 0]
        mask = self.attention_mask
        if mask is None or mask.shape[:2] != hidden_states.shape[:2]:
            return hidden_states.mean(dim=1)
        mask = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def checkpoint_pooling(path: str) -> str:
    """'mean' / 'cls' from a sentence-transformers `1_Pooling/config.json`, else 'default'."""
    cfg = Path(path) / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return "default"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return "default"
    if data.get("pooling_mode_mean_tokens"):
        return "mean"
    if data.get("pooling_mode_cls_token"):
        return "cls"
    return "default"


def apply_pooling(model: nn.Module, mode: str, checkpoint_path: str | None = None) -> str:
    """Swap the backbone's pooler for `mode` ('auto' resolves from the checkpoint). Returns the mode used."""
    if mode == "auto":
        mode = checkpoint_pooling(checkpoint_path) if checkpoint_path else "default"
    if mode == "default":
        return mode
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    if backbone is None or not isinstance(getattr(backbone, "pooler", None), nn.Module):
        raise HftlError(
            f"Recipe key 'model.pooling': {mode!r} needs a backbone with a pooler (BERT-style); "
            f"{type(model).__name__} has none. Use model.pooling: default.")
    pooler = TokenPooler(mode)
    backbone.pooler = pooler

    def keep_mask(module, args, kwargs):
        pooler.attention_mask = kwargs.get("attention_mask")

    # On the backbone, not the task model: the backbone is also called alone (feature caching).
    backbone.register_forward_pre_hook(keep_mask, with_kwargs=True)
    model.config.hftl_pooling = mode
    return mode
