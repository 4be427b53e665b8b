"""`eval_tta:` test-time augmentation: at evaluation, class probabilities averaged over the image and its flips."""

from __future__ import annotations

import torch

from hftl.training.features.base import Feature


class Tta(Feature):
    name = "eval_tta"

    def __init__(self, flips: list[str]):
        self.flips = list(flips)

    @classmethod
    def from_recipe(cls, recipe, task):
        return cls(recipe.eval_tta) if recipe.eval_tta else None

    def blocks_cache(self) -> str | None:
        return "eval_tta evaluates the backbone on flipped images"

    def predict(self, model, inputs: dict):
        x, labels = inputs.get("pixel_values"), inputs.get("labels")
        if x is None:
            return None
        rest = {k: v for k, v in inputs.items() if k not in ("labels", "pixel_values")}
        views = [x] + [x.flip(-1 if t == "hflip" else -2) for t in self.flips]
        probs = torch.stack([model(pixel_values=v, **rest).logits.float().softmax(-1) for v in views]).mean(0)
        logits = probs.clamp_min(1e-12).log()  # log of the averaged probabilities: argmax and loss follow them
        return (torch.nn.functional.nll_loss(logits, labels) if labels is not None else None), logits

    def card_lines(self) -> list[str]:
        return [f"- Evaluation averages class probabilities over the image and its {' and '.join(self.flips)} "
                "(test-time augmentation); the saved model and `pipeline()` see each image once."]
