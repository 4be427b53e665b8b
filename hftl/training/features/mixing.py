"""`regularization:`: label smoothing for any classifier, and mixup / CutMix of training image batches
(timm.data.Mixup) with the soft-target loss they need."""

from __future__ import annotations

import torch

from hftl.training.features.base import Feature


class BatchMixer:
    """Applied to each training batch before the forward pass (evaluation batches are never mixed): pixel_values
    mixed in pairs, integer labels replaced by soft targets (label smoothing folded in). timm mixes a batch with its
    own reverse, so it needs an even size: an odd batch's last example stays unmixed, with a smoothed one-hot
    target."""

    def __init__(self, regularization, num_classes: int):
        from timm.data import Mixup

        self.num_classes = num_classes
        self.smoothing = regularization.label_smoothing
        self.mixup = Mixup(mixup_alpha=regularization.mixup, cutmix_alpha=regularization.cutmix,
                           prob=regularization.mix_prob, switch_prob=regularization.switch_prob, mode="batch",
                           label_smoothing=self.smoothing, num_classes=num_classes)

    def __call__(self, inputs: dict) -> dict:
        x, y = inputs.get("pixel_values"), inputs.get("labels")
        if x is None or y is None or y.is_floating_point():
            return inputs
        n = len(x) - len(x) % 2
        soft = self.one_hot(y)
        x = x.clone()
        if n:
            x[:n], soft[:n] = self.mixup(x[:n], y[:n])
        return {**inputs, "pixel_values": x, "labels": soft}

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        off = self.smoothing / self.num_classes
        return torch.full((len(y), self.num_classes), off, device=y.device).scatter_(1, y.view(-1, 1), 1 - self.smoothing + off)


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from timm.loss import SoftTargetCrossEntropy

    return SoftTargetCrossEntropy()(logits.float(), targets.float())


class Regularization(Feature):
    name = "regularization"

    def __init__(self, section):
        self.section = section
        self.mixer = None
        self.varies_inputs = section.mixing

    @classmethod
    def from_recipe(cls, recipe, task):
        reg = recipe.regularization
        return cls(reg) if reg.mixing or reg.label_smoothing else None

    def prepared(self, s) -> None:
        if self.section.mixing:
            self.mixer = BatchMixer(self.section, len(s.splits.label_names))

    def training_defaults(self) -> dict:
        # with mixup / cutmix, label smoothing is folded into the mixed targets instead
        return {} if self.section.mixing else {"label_smoothing_factor": self.section.label_smoothing}

    def transform_batch(self, inputs: dict) -> dict:
        return self.mixer(inputs) if self.mixer is not None else inputs

    def task_loss(self, model, inputs: dict):
        labels = inputs.get("labels")
        if labels is None or not labels.is_floating_point() or labels.ndim != 2:
            return None
        # soft targets: the model's own loss would read float labels as multi-label (BCE)
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        return soft_target_loss(outputs.logits, labels), outputs

    def card_lines(self) -> list[str]:
        reg = self.section
        if reg.mixing:
            return [f"- Mixed training batches (timm Mixup): mixup alpha {reg.mixup}, cutmix alpha {reg.cutmix}, "
                    f"{reg.mix_prob:.0%} of batches, cutmix share {reg.switch_prob}; soft-target cross-entropy"
                    f"{f', label smoothing {reg.label_smoothing} in the targets' if reg.label_smoothing else ''}."]
        return [f"- Label smoothing {reg.label_smoothing} (TrainingArguments.label_smoothing_factor)."]
