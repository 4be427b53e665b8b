"""`strategy:`: what freezes, what trains at which learning rate, when layers unfreeze, what re-initialises."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from hftl.errors import did_you_mean
from hftl.recipe.base import NonNegativeInt, PositiveFloat, PositiveInt, Section

PRESETS = ("feature_extraction", "partial", "full", "auto")


class FreezeSpec(Section):
    below_depth: NonNegativeInt | None = Field(None, description="Freeze every parameter whose depth is < k.")
    patterns: list[str] | None = Field(None, description="Freeze parameters whose names match (glob, or regex).")

    @model_validator(mode="after")
    def _one(self):
        if (self.below_depth is None) == (self.patterns is None):
            raise ValueError("give exactly one of below_depth or patterns")
        return self


class LrGroup(Section):
    name: str
    patterns: list[str]
    lr: PositiveFloat


class DiscriminativeLR(Section):
    layer_decay: float | None = Field(None, gt=0, le=1, description="lr = head_lr * decay ** (the depths holding "
                                       "parameters between this one and the head).")
    head_lr: PositiveFloat | None = Field(None, description="LR of the head (default training.learning_rate).")
    backbone_lr: PositiveFloat | None = Field(None, description="LR at depth 0; depths in between are geometric.")
    lr_groups: list[LrGroup] | None = Field(None, description="Explicit groups; unmatched parameters get training.learning_rate.")

    @model_validator(mode="after")
    def _one_mode(self):
        if self.lr_groups is not None and any(v is not None for v in (self.layer_decay, self.head_lr, self.backbone_lr)):
            raise ValueError("lr_groups cannot be combined with layer_decay/head_lr/backbone_lr")
        if self.layer_decay is not None and self.backbone_lr is not None:
            raise ValueError("give layer_decay or backbone_lr, not both")
        if self.lr_groups is None and all(v is None for v in (self.layer_decay, self.head_lr, self.backbone_lr)):
            raise ValueError("give layer_decay, head_lr (+ backbone_lr) or lr_groups")
        return self


class GradualUnfreezing(Section):
    every_epochs: PositiveInt | None = Field(None, description="Unfreeze one more depth group (head down) every N epochs.")
    every_steps: PositiveInt | None = Field(None, description="Unfreeze one more depth group every N optimizer steps.")
    schedule: dict[NonNegativeInt, list[int | str]] | None = Field(
        None, description="{epoch (or step): [depth | 'head' | 'all', ...]}: groups that become trainable then."
    )
    by: Literal["epoch", "step"] = Field("epoch", description="Unit of the schedule's keys.")

    @field_validator("schedule", mode="before")
    @classmethod
    def _listify(cls, v):
        if isinstance(v, dict):
            return {k: (x if isinstance(x, list) else [x]) for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _one(self):
        if sum(x is not None for x in (self.every_epochs, self.every_steps, self.schedule)) != 1:
            raise ValueError("give exactly one of every_epochs, every_steps or schedule")
        return self


class Reinit(Section):
    from_depth: NonNegativeInt | None = Field(None, description="Re-initialise every block at depth >= k (not the head).")
    patterns: list[str] | None = Field(None, description="Re-initialise modules whose names match.")

    @model_validator(mode="after")
    def _one(self):
        if (self.from_depth is None) == (self.patterns is None):
            raise ValueError("give exactly one of from_depth or patterns")
        return self


class LayerMapOverride(Section):
    blocks: str = Field(description=r"Regex whose first group numbers the blocks, e.g. 'encoder\.layer\.(\d+)\.'.")
    head: list[str] | None = Field(None, description="Patterns of the task head's parameters.")


class StrategySection(Section):
    preset: Literal["feature_extraction", "partial", "full", "auto"] | None = Field(
        None, description="feature_extraction (frozen backbone), partial (lower half frozen), full, or auto (chosen "
        "before training from the data's size per class, a linear probe on the frozen features and the input "
        "statistics' distance from the backbone's: hftl/strategy/auto.py); explicit keys override a preset."
    )
    freeze: Literal["none", "backbone"] | FreezeSpec | None = Field(None, description="What starts (and stays) frozen.")
    unfreeze: list[str] = Field(default_factory=list, description="Patterns kept trainable whatever `freeze` says.")
    freeze_batchnorm: bool | None = Field(
        None, description="Keep every BatchNorm in eval mode. Default: only in frozen layers (always)."
    )
    discriminative_lr: DiscriminativeLR | None = None
    gradual_unfreezing: GradualUnfreezing | None = None
    reinit: Reinit | None = None
    layer_map: LayerMapOverride | None = Field(None, description="Override the automatic layer map.")
    cache_features: Literal["auto"] | bool = Field(
        "auto", description="Compute frozen-backbone features once and train the head on them (auto: when the "
        "whole backbone stays frozen and augmentation is off).")
    head_fit: Literal["trainer", "lbfgs"] = Field(
        "trainer", description="lbfgs: the head alone is fitted to convergence on the frozen (or contrastively "
        "tuned) body's features -- full batch, L-BFGS, L2 as scikit-learn's LogisticRegression (SetFit's head) -- "
        "in place of the Trainer's epochs, so 32 rows get a converged head; trainer: the Trainer trains for "
        "training.num_train_epochs.")
    head_c: PositiveFloat = Field(1.0, description="head_fit lbfgs: inverse L2 strength, scikit-learn's C (loss = "
                                  "sum of cross-entropies + |W|^2 / 2C).")

    @field_validator("preset", mode="before")
    @classmethod
    def _preset(cls, v):
        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; allowed: {', '.join(PRESETS)}.{did_you_mean(v, PRESETS)}")
        return v

    @model_validator(mode="after")
    def _apply_preset(self):
        # A preset only fills what the recipe left unset, so explicit keys always win. `partial` leaves
        # `freeze` unset: the lower half of the blocks is resolved against the layer map at build time.
        defaults = {
            "feature_extraction": {"freeze": "backbone", "freeze_batchnorm": True},
            "full": {"freeze": "none", "freeze_batchnorm": False},
        }.get(self.preset, {})
        for k, v in defaults.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        if self.freeze is None and self.preset not in ("partial", "auto"):
            object.__setattr__(self, "freeze", "none")
        return self
