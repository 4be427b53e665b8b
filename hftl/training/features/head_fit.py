"""A head fitted to convergence (strategy.head_fit: lbfgs), in place of the Trainer's epochs.

With a frozen (or contrastively tuned) body the head's problem is convex for a linear head: logistic regression
on the features it reads. Counting its training in epochs gives 32 rows a handful of optimizer steps; here the
head's exact inputs over the training split are taken once (one eval-mode forward; cached backbone features where the
run has them), and the head module itself -- whatever it is: a Linear, RoBERTa's dense + out_proj, timm's fc -- is
fitted full batch by L-BFGS on sum(cross-entropy) + |W|^2 / 2C over its weight matrices (biases free), scikit-learn
LogisticRegression's objective (C = strategy.head_c) and SetFit's default head. Only the head's parameters change;
the model stays the task model, so the run dir saves and loads as any other.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from hftl.data import batches
from hftl.errors import HftlError
from hftl.training.features.base import Feature
from hftl.training.features.contrastive import head_module

logger = logging.getLogger("hftl")
MAX_ITER, TOLERANCE = 500, 1e-7


class HeadFit(Feature):
    name = "head_fit"

    def __init__(self, c: float):
        self.c = c
        self.result: dict = {}

    @classmethod
    def from_recipe(cls, recipe, task):
        return cls(recipe.strategy.head_c) if recipe.strategy.head_fit == "lbfgs" else None

    def plan_lines(self) -> list[str]:
        return [f"The head is fitted to convergence by L-BFGS (strategy.head_fit: lbfgs, C {self.c:g}) in place of "
                "the Trainer's epochs; no other parameter changes after this point.", ""]

    def train(self, trainer) -> None:
        start = time.perf_counter()
        model = trainer.accelerator.unwrap_model(trainer.model)
        self.result = fit_head(model, trainer.train_dataset, trainer.data_collator, self.c,
                               trainer.args.per_device_eval_batch_size)
        seconds = time.perf_counter() - start
        self.result["seconds"] = round(seconds, 2)
        trainer.log({"head_fit_loss": self.result["loss"], "head_fit_iterations": self.result["iterations"],
                     "train_runtime": round(seconds, 4)})

    def final_metrics(self, trainer) -> dict:
        return {f"head_fit_{k}": v for k, v in self.result.items()}

    def card_lines(self) -> list[str]:
        if not self.result:
            return []
        r = self.result
        return [f"- Head fitted to convergence (L-BFGS, C {self.c:g}) on {r['examples']} training examples: "
                f"{r['iterations']} iterations, mean cross-entropy {r['loss']:.4f}, training accuracy "
                f"{r['train_accuracy']:.3f}, {r['seconds']:.1f} s."]


@torch.no_grad()
def head_inputs(model, dataset, collator, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(the head's input, labels) per batch of the labelled training rows, in eval mode."""
    head = head_module(model)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    was_training = model.training
    model.eval()
    device = next(head.parameters()).device
    out = []
    try:
        for b in batches(dataset, collator, batch_size, device):
            if b.labels is None or b.labels.dim() != 1 or b.labels.is_floating_point():
                raise HftlError("Recipe key 'strategy.head_fit' is lbfgs, which needs one class id per example; "
                                "these labels are not (multi-label or soft targets): use head_fit: trainer.")
            seen.clear()
            model(**b.inputs)
            keep = b.labels >= 0  # rows without a label (a transfer set) do not enter the fit
            if keep.any():
                out.append((seen[-1][keep.to(seen[-1].device)], b.labels[keep].to(device)))
    finally:
        hook.remove()
        model.train(was_training)
    return out


def fit_head(model, dataset, collator, c: float, batch_size: int = 64) -> dict:
    """Fit the head module's parameters as described above; -> {'iterations', 'loss', 'train_accuracy', 'examples'}."""
    data = head_inputs(model, dataset, collator, batch_size)
    head = head_module(model)
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise HftlError("Recipe key 'strategy.head_fit' is lbfgs but the head has no trainable parameter.")
    n = sum(len(y) for _, y in data)
    weights = [p for p in params if p.dim() >= 2]
    was_training = head.training
    head.eval()  # no dropout inside the head: a deterministic objective
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=MAX_ITER, tolerance_grad=TOLERANCE,
                                  tolerance_change=TOLERANCE * 1e-2, history_size=20, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        total = sum(F.cross_entropy(_logits(head(x)), y, reduction="sum") for x, y in data)
        penalty = sum((w * w).sum() for w in weights) / (2 * c)
        loss = (total + penalty) / n  # scaled by 1/n: the same minimum, better-conditioned steps
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    iterations = optimizer.state[params[0]].get("n_iter", 0)
    for p in params:
        p.grad = None
    with torch.no_grad():  # still in eval mode: one pass for the loss and the accuracy
        scored = [(_logits(head(x)), y) for x, y in data]
    head.train(was_training)
    ce = sum(F.cross_entropy(z, y, reduction="sum").item() for z, y in scored) / n
    right = sum((z.argmax(-1) == y).sum().item() for z, y in scored)
    logger.info("head fitted by L-BFGS: %d iterations, cross-entropy %.4f", iterations, ce)
    return {"iterations": int(iterations), "loss": round(ce, 6), "train_accuracy": round(right / n, 4),
            "examples": n}


def _logits(out):
    return out.logits if hasattr(out, "logits") else out
