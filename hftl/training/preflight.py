"""Pre-flight: one training step's forward + backward before the Trainer starts, leaving no trace.

Some incompatibilities only show when the model runs: a PEFT method the architecture cannot take
(prefix tuning needs a KV cache the model's attention reads), virtual tokens beyond the position
embeddings, a strategy that breaks the forward. Found here they are one recipe error, before any
output is written, instead of a traceback in the first step.

"No trace": the gradients are dropped (grad None, as before), buffers (BatchNorm statistics) and
train/eval flags are restored, and the random state is forked, so the run that follows is
bit-identical to one without the pre-flight.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from importlib.metadata import version

import numpy as np
import torch
from torch import nn

from hftl.errors import HftlError
from hftl.hooks import unwrap
from hftl.recipe.peft import is_prompt_learning, peft_type

# Two examples, not one: BatchNorm in training mode refuses a batch of one after global pooling.
N_EXAMPLES = 2


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__).rstrip(".")


def _explain(e: Exception, model: nn.Module, recipe) -> HftlError:
    task_model = unwrap(model)
    arch = f"{type(task_model).__name__} (model_type {getattr(task_model.config, 'model_type', '?')!r})" \
        if hasattr(task_model, "config") else type(task_model).__name__
    why = f"{type(e).__name__}: {_first_line(e)}"
    if recipe.peft is not None:
        method = recipe.peft.method
        instead = ("prompt_tuning, or lora/ia3 (they adapt weights and need nothing from the model's attention)"
                   if is_prompt_learning(peft_type(method)) else "lora with other peft.target_modules, or ia3")
        if "past key values" in why:  # transformers 5.24 renamed the models' `past_key_values` argument to `cache`
            why += (f"; with transformers {version('transformers')} and peft {version('peft')} the model's "
                    "attention takes no key/value prefix")
        return HftlError(
            f"Recipe key 'peft.method': {method} cannot train {arch}; its first training step fails ({why}). "
            f"Try {instead}, or another model.")
    keys = [f"strategy.{k}" for k in ("reinit", "layer_map", "gradual_unfreezing", "freeze") if
            getattr(recipe.strategy, k, None) not in (None, "none")]
    where = f"Recipe keys {', '.join(repr(k) for k in keys)}" if keys else "Recipe key 'model.model_name_or_path'"
    return HftlError(f"{where}: the first training step of {arch} fails with this recipe ({why}). Check the "
                     f"model, data and strategy sections (task {recipe.task}).")


@contextmanager
def rng_kept(device: torch.device | None = None):
    """Python's, numpy's and torch's random states (the device's too) as they were, whatever runs inside: a
    pre-flight or probe step must not change the run that follows."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _own_loss(model, batch):
    out = model(**batch)
    return out["loss"] if isinstance(out, dict) else getattr(out, "loss", None)


def check_first_step(model: nn.Module, dataset, collator, recipe, device: torch.device | None = None,
                     task=None) -> None:
    """Forward + backward on a small batch from the real collator; any failure is a recipe error."""
    if dataset is None or len(dataset) == 0:
        return
    device = device or next(model.parameters()).device
    training = {m: m.training for m in model.modules()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        with rng_kept(device):
            batch = collator([dataset[i] for i in range(min(N_EXAMPLES, len(dataset)))])
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            model.train()
            loss = task.training_loss(model, batch) if task is not None else _own_loss(model, batch)
            if loss is None:
                raise ValueError("the model returned no loss for a labelled batch")
            if loss.requires_grad:
                loss.backward()
    except HftlError:
        raise
    except Exception as e:  # any error of the forward/backward: torch, transformers and PEFT raise many types
        raise _explain(e, model, recipe) from None
    finally:
        for p in model.parameters():
            p.grad = None
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
        for m, flag in training.items():
            m.training = flag
