"""Contrastive body tuning (recipe key `contrastive`): SetFit's first stage, for any encoder hftl trains.

Before the Trainer, the backbone parameters the strategy trains (all of them with freeze: none, the adapter's with
PEFT; never the head) are tuned on pairs drawn from the labels. An example's embedding is what the task head reads
(a forward pre-hook on it: the pooled text vector, an image's pooled features; token sequences are mean-pooled over
their mask), so the head then starts from class clusters in exactly the space it sees. The losses are
sentence-transformers' own, fed those embeddings. Then the head trains as the strategy says: strategy.head_fit:
lbfgs (SetFit's converged logistic-regression head) or the Trainer's epochs (end to end).

Pairs (SetFit's `num_iterations` sampling): for each of num_iterations rounds and each labelled example, one
positive partner (another example of its class; itself where the class has one) and one negative partner (any
example of another class) -- positives and negatives balanced, 2 x num_iterations x examples pairs, shuffled, then
a seeded, balanced sample of max_pairs if set. batch_hard_triplet draws no pairs: each step is a batch of examples,
each example num_iterations times per epoch.
"""

from __future__ import annotations

import logging
import random
import time

import torch
from torch import nn

from hftl.data import batches
from hftl.errors import HftlError
from hftl.hooks import pooled_features, task_head, unwrap
from hftl.training.features.base import Feature

logger = logging.getLogger("hftl")
LOSSES = {"cosine": "CosineSimilarityLoss", "contrastive": "ContrastiveLoss",
          "batch_hard_triplet": "BatchHardTripletLoss"}


def draw_pairs(labels: list[int], num_iterations: int, seed: int, max_pairs: int | None = None
               ) -> list[tuple[int, int, float]]:
    """(a, b, 1.0 same class / 0.0 different) index pairs as described above; labels < 0 (unlabelled) are skipped."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        if y >= 0:
            by_class.setdefault(y, []).append(i)
    if len(by_class) < 2:
        raise HftlError("Recipe key 'contrastive' draws negative pairs from different classes; the training split "
                        f"has {len(by_class)} labelled class(es).")
    positives, negatives = [], []
    for _ in range(num_iterations):
        for y, rows in by_class.items():
            others = [i for c, r in by_class.items() if c != y for i in r]
            for a in rows:
                mates = [i for i in rows if i != a] or [a]
                positives.append((a, rng.choice(mates), 1.0))
                negatives.append((a, rng.choice(others), 0.0))
    if max_pairs is not None and max_pairs < len(positives) + len(negatives):
        positives = rng.sample(positives, max_pairs // 2)
        negatives = rng.sample(negatives, max_pairs - max_pairs // 2)
    pairs = positives + negatives
    rng.shuffle(pairs)
    return pairs


def draw_batches(labels: list[int], num_iterations: int, batch_size: int, seed: int) -> list[list[int]]:
    """batch_hard_triplet: every labelled example num_iterations times, shuffled into batches."""
    rng = random.Random(seed)
    rows = [i for i, y in enumerate(labels) if y >= 0] * num_iterations
    rng.shuffle(rows)
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def head_module(model: nn.Module) -> nn.Module:
    head = task_head(model)
    if head is None:
        raise HftlError(f"Found no task head in {type(unwrap(model)).__name__} whose input to read embeddings from.")
    return head


class Contrastive(Feature):
    name = "contrastive"

    def __init__(self, section, seed: int):
        self.section = section
        self.seed = seed
        self.body: list[str] = []
        self.units: list = []  # pairs, or example batches for the triplet loss
        self.result: dict = {}

    @classmethod
    def from_recipe(cls, recipe, task):
        return cls(recipe.contrastive, recipe.seed) if recipe.contrastive is not None else None

    def prepared(self, s) -> None:
        lm = s.plan.layer_map
        self.body = sorted(n for n in s.plan.trainable.candidates if lm.depth[n] != lm.head_depth)
        if not self.body:
            raise HftlError("Recipe key 'contrastive' tunes the backbone parameters the strategy trains, and this "
                            "strategy trains the head alone. Use strategy.freeze: none (or a peft: section) with "
                            "strategy.head_fit: lbfgs for SetFit's two stages.")
        labels = [int(y) for y in s.splits.train["labels"]]
        c = self.section
        if c.loss == "batch_hard_triplet":
            self.units = draw_batches(labels, c.num_iterations, c.batch_size, self.seed)
        else:
            self.units = draw_pairs(labels, c.num_iterations, self.seed, c.max_pairs)
        self.examples = sum(y >= 0 for y in labels)

    def _what(self) -> str:
        c = self.section
        count = (f"{len(self.units):,} batches of {c.batch_size} examples" if c.loss == "batch_hard_triplet"
                 else f"{len(self.units):,} pairs ({c.num_iterations} positive + {c.num_iterations} negative per "
                 f"example{', sampled' if c.max_pairs else ''})")
        return (f"{count} from {self.examples} labelled examples, sentence-transformers' {LOSSES[c.loss]}, "
                f"{c.epochs} epoch(s), batch {c.batch_size}, AdamW lr {c.learning_rate:g}, over {len(self.body)} "
                "backbone parameter tensors (the head untouched)")

    def plan_lines(self) -> list[str]:
        return [f"Stage 1, before the Trainer: contrastive body tuning on {self._what()}.", ""]

    def before_train(self, s, resume) -> None:
        if resume is not None:  # the checkpoint holds the tuned body
            logger.info("contrastive body tuning skipped: resuming from %s", resume)
            return
        self.result = tune_body(s.model, s.train_dataset, s.collator, self.units, self.section, self.body,
                                s.device, self.seed, bool(s.recipe.strategy.freeze_batchnorm))

    def final_metrics(self, trainer) -> dict:
        return {f"contrastive_{k}": v for k, v in self.result.items()}

    def card_lines(self) -> list[str]:
        if not self.result:
            return []
        r = self.result
        return [f"- Contrastive body tuning (SetFit's first stage): {self._what()}; loss {r['first_loss']:.4f} -> "
                f"{r['last_loss']:.4f} (first / last 10% of steps), {r['seconds']:.0f} s."]


def _loss(section):
    from sentence_transformers.sentence_transformer import losses

    if section.loss == "cosine":
        return losses.CosineSimilarityLoss(None)
    if section.loss == "contrastive":
        return losses.ContrastiveLoss(None, margin=section.margin)
    return losses.BatchHardTripletLoss(None, margin=section.margin,
                                       distance_metric=losses.BatchHardTripletLossDistanceFunction.cosine_distance)


def tune_body(model, dataset, collator, units, section, body: list[str], device, seed: int,
              freeze_batchnorm: bool) -> dict:
    """The contrastive steps on `body` (parameter names of `model`); every other parameter keeps its requires_grad
    and its value. -> {'steps', 'first_loss', 'last_loss', 'seconds'}."""
    from transformers import get_linear_schedule_with_warmup

    loss_fn = _loss(section)
    params = dict(model.named_parameters())
    was = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in body)
    head = head_module(model)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    steps = section.epochs * -(-len(units) // (1 if section.loss == "batch_hard_triplet" else section.batch_size))
    optimizer = torch.optim.AdamW([params[n] for n in body], lr=section.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    rng = random.Random(seed)
    was_training = model.training
    model.train()
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    history, start = [], time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(section.epochs):
                order = list(range(len(units)))
                rng.shuffle(order)
                for step in _steps(order, units, section):
                    loss = _step_loss(model, dataset, collator, step, section, loss_fn, seen, device)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                    history.append(loss.item())
    finally:
        hook.remove()
        for n, p in params.items():
            p.requires_grad_(was[n])
            p.grad = None
        model.train(was_training)
    tenth = max(1, len(history) // 10)
    result = {"steps": len(history), "first_loss": sum(history[:tenth]) / tenth,
              "last_loss": sum(history[-tenth:]) / tenth, "seconds": round(time.perf_counter() - start, 1)}
    logger.info("contrastive body tuning: %d steps, loss %.4f -> %.4f in %.0f s", result["steps"],
                result["first_loss"], result["last_loss"], result["seconds"])
    return result


def _steps(order, units, section):
    if section.loss == "batch_hard_triplet":
        for i in order:
            yield units[i]
        return
    for i in range(0, len(order), section.batch_size):
        yield [units[j] for j in order[i:i + section.batch_size]]


def _step_loss(model, dataset, collator, step, section, loss_fn, seen, device):
    """One forward over the step's examples (both sides of the pairs in one batch) and the loss on their embeddings."""
    triplet = section.loss == "batch_hard_triplet"
    rows = list(step) if triplet else [a for a, _, _ in step] + [b for _, b, _ in step]
    batch = next(batches(dataset.select(rows), collator, len(rows), device))
    seen.clear()
    model(**batch.inputs)
    emb = pooled_features(seen[-1], batch.inputs.get("attention_mask"))
    if triplet:
        return loss_fn.compute_loss_from_embeddings([emb], batch.labels.to(emb.device))
    n = len(step)
    target = torch.tensor([y for _, _, y in step], device=emb.device)
    return loss_fn.compute_loss_from_embeddings([emb[:n], emb[n:]], target)
