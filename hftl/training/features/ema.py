"""An exponential moving average of the weights (timm's ModelEmaV3), kept beside the model the Trainer trains.

Updated after every optimizer step (a callback), swapped into the model for evaluation, copied into it for good
when training ends (the average is what the run saves), and stored in each checkpoint (`ema.safetensors`) so a
resumed run continues the same average. Under DDP every rank averages the same synchronised weights.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback

from hftl.files import fix_modes
from hftl.training.features.base import Feature

logger = logging.getLogger("hftl")
FILE = "ema.safetensors"


def _has_tied(model) -> bool:
    return len(list(model.named_parameters(remove_duplicate=False))) > len(list(model.parameters()))


class WeightEma(TrainerCallback):
    def __init__(self, model, decay: float, update_after_step: int = 0):
        from timm.utils import ModelEmaV3

        self.model = model
        # Buffers (BatchNorm statistics) are averaged too, as timm does, unless weights are tied: ModelEmaV3 walks
        # the state dict, where a tied tensor appears under both names and would be averaged twice per step.
        self.ema = ModelEmaV3(model, decay=decay, update_after_step=update_after_step, exclude_buffers=_has_tied(model))
        self.decay = decay

    def on_train_begin(self, args, state, control, **kwargs):
        if getattr(self, "_restart", False):  # the checkpoint's weights are loaded by now
            self.ema.set(self.model)
            self._restart = False
        horizon = 1 / (1 - self.decay)
        if state.max_steps and horizon > state.max_steps:
            left = self.decay ** state.max_steps
            logger.warning("ema.decay %s averages over ~%d steps but the run has %d: the saved average still holds "
                           "%.0f%% of the starting weights; a decay near %s fits this run", self.decay, horizon,
                           state.max_steps, 100 * left, round(1 - 4 / state.max_steps, 4))

    def on_step_end(self, args, state, control, **kwargs):
        self.ema.update(self.model, step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and ckpt.is_dir():
            from safetensors.torch import save_model

            save_model(self.ema.module, str(ckpt / FILE))
            fix_modes(ckpt)

    def resume(self, checkpoint: str | Path) -> None:
        path = Path(checkpoint) / FILE
        if not path.is_file():
            logger.warning("%s has no %s: the weight average restarts from the resumed weights", checkpoint, FILE)
            self._restart = True
            return
        from safetensors.torch import load_model

        load_model(self.ema.module, str(path))

    @contextmanager
    def swapped(self):
        """The average in the model's tensors for the duration (evaluation), the trained weights back after."""
        pairs = _float_pairs(self.model, self.ema.module)
        kept = [m.detach().clone() for m, _ in pairs]
        with torch.no_grad():
            for m, e in pairs:
                m.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for (m, _), k in zip(pairs, kept):
                    m.copy_(k)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for m, e in _float_pairs(self.model, self.ema.module):
            m.copy_(e)


def _float_pairs(model, ema_module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m, e) for m, e in zip(model.state_dict().values(), ema_module.state_dict().values())
            if m.is_floating_point()]


class Ema(Feature):
    """`ema:`: evaluations and the saved model are the weight average (WeightEma, attached once the Trainer has
    placed the model)."""

    name = "ema"

    def __init__(self, section):
        self.section = section
        self.ema: WeightEma | None = None
        self.resume: str | None = None

    @classmethod
    def from_recipe(cls, recipe, task):
        return cls(recipe.ema) if recipe.ema is not None else None

    def before_train(self, s, resume: str | None) -> None:
        self.resume = resume

    def callbacks(self, trainer) -> list:
        self.ema = WeightEma(trainer.model, self.section.decay, self.section.update_after_step)
        if self.resume is not None:  # a resumed run continues the checkpoint's average
            self.ema.resume(self.resume)
        return [self.ema]

    def evaluating(self):
        return self.ema.swapped()

    def after_train(self, trainer) -> None:
        self.ema.copy_to_model()  # the average is what the run saves

    def card_lines(self) -> list[str]:
        return [f"- **Weights: the exponential moving average** (decay {self.section.decay}, from step "
                f"{self.section.update_after_step + 1}) of the training weights, updated every optimizer step: the "
                "evaluations above and the saved model use the average, not the last step's weights."]
