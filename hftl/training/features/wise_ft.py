"""WiSE-FT's curve for a fine-tuned zero-shot run (Wortsman et al. 2022): the validation scores of the weight-space
ensembles (1 - alpha) x the model the run started from + alpha x the fine-tuned one, for alpha 0, 0.25, 0.5, 0.75
and 1, in metrics.json and the card. Reported, never chosen on the validation split: `hftl export --wise-ft ALPHA`
writes the ensemble a user picks."""

from __future__ import annotations

import torch

from hftl.hooks import unwrap
from hftl.recipe.training import trains
from hftl.runs.export import interpolate
from hftl.training.features.base import Feature

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


class WiseFt(Feature):
    name = "wise_ft"

    def __init__(self):
        self.base: dict | None = None
        self.scores: dict[float, dict] = {}
        self.metric_names: dict[str, str] = {}

    @classmethod
    def from_recipe(cls, recipe, task):
        # a model that reads class names (zero-shot) and trains all of itself (an adapter's base is not the run's)
        return cls() if task.open_labels and trains(recipe.training) and recipe.peft is None else None

    def prepared(self, s) -> None:
        self.base = {k: v.detach().cpu().clone() for k, v in unwrap(s.model).state_dict().items()}
        self.metric_names = dict(s.task.metric_names)

    def final_metrics(self, trainer) -> dict:
        model = unwrap(trainer.accelerator.unwrap_model(trainer.model))
        tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            for alpha in ALPHAS:
                base = {k: self.base[k].to(v.device) for k, v in tuned.items() if k in self.base}
                ensemble = interpolate(base, tuned, alpha)
                with torch.no_grad():
                    model.load_state_dict(ensemble)
                out = trainer.predict(trainer.eval_dataset, metric_key_prefix="eval")
                self.scores[alpha] = {k.removeprefix("eval_"): v for k, v in out.metrics.items()
                                      if k.removeprefix("eval_") in self.metric_names}
        finally:
            with torch.no_grad():
                model.load_state_dict(tuned)
        return {f"wise_ft_{alpha:g}_{k}": v for alpha, m in self.scores.items() for k, v in m.items()}

    def report(self, out) -> list[str]:
        keys = list(self.metric_names)
        lines = ["", "## WiSE-FT (weight-space ensembles)", "",
                 "(1 - alpha) x the model this run started from + alpha x the fine-tuned model, on the validation split "
                 "(Wortsman et al. 2022: between the two, the ensembles often keep the base's robustness and most of "
                 "the gain). Reported, not chosen here; `hftl export RUN --wise-ft ALPHA` writes one.", "",
                 "| alpha | " + " | ".join(self.metric_names[k] for k in keys) + " |", "|---:|" + "---:|" * len(keys)]
        for alpha, m in self.scores.items():
            lines.append(f"| {alpha:g} | " + " | ".join(f"{m[k]:.4f}" if k in m else "-" for k in keys) + " |")
        return lines
