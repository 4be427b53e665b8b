"""Sentence pooling for a sequence classifier fine-tuned with hftl (written by hftl into the run).

The classifier sits on the attention-masked mean of the token states (or on the first token, raw), as
sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained, instead of the architecture's
pooler. The model is the architecture's own <Base>ForSequenceClassification with that pooler swapped for a
parameter-free one; every weight is the architecture's own.

    from transformers import pipeline
    classifier = pipeline("text-classification", model="<run dir or Hub repo>", trust_remote_code=True)

Without trust_remote_code=True transformers refuses to load the run (its model_type is
"hftl_pooled_<base>"), instead of silently putting the base model's untrained pooler back. This file
needs torch and transformers only.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

MODES = ("mean", "cls")
MODEL_TYPE_PREFIX = "hftl_pooled_"


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


def use_token_pooling(model: nn.Module, mode: str) -> None:
    """Swap the backbone's pooler (BERT-style models) for a TokenPooler in place; config.hftl_pooling records it."""
    if mode not in MODES:
        raise ValueError(f"pooling {mode!r} is not one of {', '.join(MODES)}")
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    if backbone is None or not isinstance(getattr(backbone, "pooler", None), nn.Module):
        raise ValueError(f"{type(model).__name__} has no backbone with a pooler (BERT-style) to replace")
    pooler = TokenPooler(mode)
    backbone.pooler = pooler

    def keep_mask(module, args, kwargs):
        # the module's own pooler, not a closure's: a deep copy of the model (a distillation student) pools its own
        if isinstance(module.pooler, TokenPooler):
            module.pooler.attention_mask = kwargs.get("attention_mask")

    # On the backbone, not the task model: the backbone is also called alone (hftl's feature cache).
    backbone.register_forward_pre_hook(keep_mask, with_kwargs=True)
    model.config.hftl_pooling = mode


def pooled_classes(base_model_type: str):
    """(config class, model class) for `base_model_type`'s sequence classifier with token pooling."""
    base_config = CONFIG_MAPPING[base_model_type]
    base_model = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[base_config]

    class HftlPooledConfig(base_config):
        model_type = MODEL_TYPE_PREFIX + base_model_type

    class HftlPooledForSequenceClassification(base_model):
        config_class = HftlPooledConfig

        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            use_token_pooling(self, getattr(config, "hftl_pooling", "mean"))

    return HftlPooledConfig, HftlPooledForSequenceClassification


BASE_MODEL_TYPE = "bert"  # the run's architecture: hftl writes it here when it copies this file into a run
HftlPooledConfig, HftlPooledForSequenceClassification = pooled_classes(BASE_MODEL_TYPE)
