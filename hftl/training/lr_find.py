"""`hftl lr-find RECIPE`: fastai's learning-rate range test, through the run's own Trainer and param groups.

The recipe is set up as for training (freezing, discriminative learning rates, PEFT, mixup: what the run will
train with); then the base learning rate grows exponentially from `start_lr` to `end_lr` over `num_steps`
optimizer steps, every param group keeping its ratio to it, while the smoothed training loss is recorded, until
it exceeds `diverge` times its minimum. The suggestion is fastai's "valley": the point a third of the way into
the longest descending stretch of the smoothed curve. Gradual unfreezing is held at its first stage (the test
is about the layers that train first). The model is left exactly as it was built: the weights and
requires_grad flags are restored afterwards, and nothing is written to the recipe's output dir.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from hftl.errors import HftlError
from hftl.files import write_json
from hftl.hooks import GradualUnfreezing
from hftl.recipe import Recipe, load_recipe
from hftl.training.pipeline import make_trainer
from hftl.training.setup import setup

logger = logging.getLogger("hftl")


@dataclass
class LrFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed (bias-corrected exponential average, beta 0.98), as fastai plots them
    raw_losses: list[float]
    suggestion: float | None
    model: Any = None  # the model as set up, restored after the test
    files: dict[str, Path] = field(default_factory=dict)


class _RangeSchedule:
    """Trainer mixin: the learning rate of every param group is its own rate x `lr_factor(step)`."""

    lr_factor = None

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, self.lr_factor)
        return self.lr_scheduler


class _Recorder(TrainerCallback):
    def __init__(self, trainer, lr_at, diverge: float, beta: float = 0.98):
        self.trainer, self.lr_at, self.diverge, self.beta = trainer, lr_at, diverge, beta
        self.lrs, self.losses, self.raw = [], [], []
        self._avg, self._best = 0.0, math.inf

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if self.trainer.skipped_steps or not math.isfinite(loss):
            control.should_training_stop = True  # diverged to inf / NaN
            return
        n = len(self.raw) + 1
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smooth = self._avg / (1 - self.beta ** n)
        self.lrs.append(self.lr_at(state.global_step - 1))
        self.raw.append(loss)
        self.losses.append(smooth)
        self._best = min(self._best, smooth)
        if n > 5 and smooth > self.diverge * self._best:
            control.should_training_stop = True


def valley(lrs: list[float], losses: list[float]) -> float | None:
    """fastai's `valley` suggestion: the longest run of decreasing losses (not necessarily adjacent points), and
    the learning rate a third of the way (plus a sixth) into it."""
    n = len(losses)
    if n < 3:
        return None
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return lrs[max_start + int(sections) + int(sections / 2)]


def lr_find(recipe, overrides: list[str] | None = None, *, start_lr: float = 1e-7, end_lr: float = 10.0,
            num_steps: int = 100, diverge: float = 4.0, output: str | Path | None = None) -> LrFindResult:
    if not 0 < start_lr < end_lr:
        raise HftlError(f"lr-find needs 0 < start_lr < end_lr (got start_lr={start_lr}, end_lr={end_lr}).")
    if num_steps < 5:
        raise HftlError(f"lr-find needs at least 5 steps to draw a curve (got {num_steps}).")
    recipe = recipe if isinstance(recipe, Recipe) and not overrides else load_recipe(recipe, overrides)
    with tempfile.TemporaryDirectory(prefix="hftl-lr-find-") as scratch:
        training = {**recipe.training, "output_dir": scratch, "max_steps": num_steps, "save_strategy": "no",
                    "eval_strategy": "no", "logging_steps": 1, "report_to": "none", "resume_from_checkpoint": None,
                    "lr_scheduler_type": "constant", "warmup_steps": 0}
        recipe = recipe.model_copy(update={"training": training, "ema": None, "hub": recipe.hub.model_copy(update={"push": False})})
        s = setup(recipe)
        model = s.model
        kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        s.plan.callbacks[:] = [cb for cb in s.plan.callbacks if not isinstance(cb, GradualUnfreezing)]
        base_lr = s.args.learning_rate
        ratio = end_lr / start_lr

        def lr_at(step: int) -> float:
            return start_lr * ratio ** (step / max(num_steps - 1, 1))

        trainer = make_trainer(s, mixins=(_RangeSchedule,))
        trainer.on_nan_loss = "skip"  # divergence is expected here: it ends the test, not the process
        trainer.lr_factor = lambda step: lr_at(step) / base_lr
        recorder = _Recorder(trainer, lr_at, diverge)
        trainer.add_callback(recorder)
        try:
            trainer.train()
        finally:
            with torch.no_grad():
                model.load_state_dict(kept)
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
            model.zero_grad(set_to_none=True)
    if s.cache is not None:
        s.cache.restore()
    result = LrFindResult(recorder.lrs, recorder.losses, recorder.raw, valley(recorder.lrs, recorder.losses), model)
    if output is not None:
        result.files = write(result, Path(output), f"{recipe.task}: {recipe.model.source}")
    return result


def write(result: LrFindResult, path: Path, title: str) -> dict[str, Path]:
    """`path` (a .png) with the curve and the suggestion, and the numbers beside it as .json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = path if path.suffix else path / "lr_find.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.raw_losses, color="0.8", lw=1, label="loss")
    ax.plot(result.lrs, result.losses, lw=2, label="smoothed")
    if result.suggestion:
        ax.axvline(result.suggestion, color="tab:red", ls="--", label=f"suggested {result.suggestion:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (training.learning_rate; param groups keep their ratios)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test, {title}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    data = path.with_suffix(".json")
    write_json(data, {"suggestion": result.suggestion, "lrs": result.lrs, "losses": result.losses,
                      "raw_losses": result.raw_losses})
    return {"plot": path, "data": data}
