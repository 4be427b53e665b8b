"""Mixup / CutMix of training image batches (timm.data.Mixup) and the soft-target loss they need."""

from __future__ import annotations

import torch


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
