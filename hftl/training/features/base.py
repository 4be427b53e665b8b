"""The protocol of an optional training block (distillation, continual learning, mixup / cutmix, EMA, TTA ...).

A feature carries its recipe section and implements only the hooks it needs; every hook has a default that does
nothing. `training.setup` calls the setup hooks in its dependency order, `HftlTrainer` the trainer hooks inside each
step, `training.pipeline` the run hooks around `trainer.train()` and `training.finish` the output hooks. None of them
names a feature: a new block is a module in this folder with a `Feature` subclass, listed in `FEATURES`
(features/__init__.py). The smallest one to copy is `tta.py`.

    class MyBlock(Feature):
        name = "my_block"

        @classmethod
        def from_recipe(cls, recipe, task):
            return cls(recipe.my_block) if recipe.my_block is not None else None

        def loss_term(self, model, inputs, outputs):   # added to the task loss in training, logged as loss_my_block
            return 0.1 * outputs.logits.pow(2).mean()

        def card_lines(self):
            return ["- My block: a penalty on the logits' size, weight 0.1."]

The setup hooks get the `Setup` being built (training/setup.py): its recipe, task, splits, processor, model, args and
datasets, as far as they exist at that point. (axolotl's BasePlugin lifecycle is the model; there is no global
manager: a run holds its own list.)
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar


class Feature:
    name: ClassVar[str]
    # the training inputs change from epoch to epoch (random mixing): nothing computed from them once (backbone
    # features, teacher logits) may be reused
    varies_inputs: ClassVar[bool] = False
    task_weight: float = 1.0  # the task loss is multiplied by this when the feature adds a loss term
    loss_name: ClassVar[str | None] = None  # its loss term is logged as loss_<loss_name> (default: loss_<name>)
    first_labels: list[str] | None = None  # label names that keep the first ids (a previous run's)

    @classmethod
    def from_recipe(cls, recipe, task) -> Feature | None:
        """The feature for this recipe, or None when the recipe does not use it."""
        return None

    # ------------------------------------------------------------------------------------------ setup, in order

    def add_rows(self, s) -> None:
        """Join rows to the training split: `s.splits.train = data.join_rows(s.splits.train, rows, recipe_key)`
        (load_splits' form, a `labels` column); `s.splits` is loaded."""

    def model(self, s) -> Any:
        """A model to train instead of the checkpoint's (a previous run's, a teacher's blocks), or None."""
        return None

    def training_defaults(self) -> dict:
        """TrainingArguments values this feature sets unless the recipe does."""
        return {}

    def prepared(self, s) -> None:
        """Everything is built (`s.train_dataset`, `s.eval_dataset`, `s.collator`, `s.args`, the model on
        `s.device`): build the feature's own parts and check what only running the model shows. Writes nothing
        and stays cheap: hftl plan stops after this."""

    def plan_lines(self) -> list[str]:
        """Markdown lines heading the plan table (plan.md, `hftl plan`, the card): what runs besides the Trainer."""
        return []

    def blocks_cache(self) -> str | None:
        """Why backbone features cannot be cached with this feature on (strategy.cache_features), or None."""
        return None

    # ------------------------------------------------------------------------------------------ the trainer

    def callbacks(self, trainer) -> list:
        """TrainerCallbacks to add, called once the Trainer is built (the model on its device)."""
        return []

    def transform_batch(self, inputs: dict) -> dict:
        """A training batch, changed before the forward pass (evaluation batches are never passed here)."""
        return inputs

    def task_loss(self, model, inputs: dict):
        """(loss, outputs) in place of the model's own loss for this training batch, or None to keep it."""
        return None

    def loss_term(self, model, inputs: dict, outputs):
        """A tensor added to the task loss (times `task_weight`) in training, or None."""
        return None

    def evaluating(self):
        """A context manager around every evaluation (e.g. the weight average swapped in)."""
        return nullcontext()

    def predict(self, model, inputs: dict):
        """(loss or None, logits) of an evaluation batch in place of the model's forward (no gradients), or None."""
        return None

    # ------------------------------------------------------------------------------------------ the run

    def before_train(self, s, resume: str | None) -> None:
        """After setup, before the Trainer is built (never in hftl plan): what costs time or writes files happens
        here. `resume`: the checkpoint training resumes from, or None."""

    def train(self, trainer) -> None:
        """Train in place of `trainer.train()` (one feature at most implements this): e.g. a head fitted in closed
        form. Log through `trainer.log` (a `train_runtime` entry too) so the curves and metrics see it."""

    def after_train(self, trainer) -> None:
        """Right after the last step, before the final metrics: make the weights the ones the run keeps."""

    def final_metrics(self, trainer) -> dict:
        """Metrics measured once training is over (the model as saved, its real backbone back in place), for
        metrics.json."""
        return {}

    def card_lines(self) -> list[str]:
        """Markdown lines for the card's "Regularization" list (what ran, with its settings)."""
        return []

    def report(self, out: Path) -> list[str]:
        """Files written into the output dir and the card section they go with (markdown lines)."""
        return []


def overrides(feature: Feature, hook: str) -> bool:
    """Whether `feature` implements `hook` (the trainer calls per step only the features that do)."""
    return getattr(type(feature), hook) is not getattr(Feature, hook)
