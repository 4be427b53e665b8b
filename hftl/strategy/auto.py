"""`strategy.preset: auto`: the strategy chosen from evidence about this data and this backbone.

The seeds' decision table (002, "The Decision Framework"; 001's per-class bands) crosses dataset size with
domain similarity. Both are measured here, on the training split only, before anything trains:

- size: the median number of training examples per class -> small (< 100), medium (< 1,000), large;
- similarity: do the frozen backbone's features already separate the classes? A linear probe (standardised
  features, logistic regression, stratified k-fold) on what the head would see, as balanced accuracy rescaled
  so that 0 is chance and 1 perfect; and how far the inputs are from what the backbone saw: each BatchNorm
  layer's batch statistics against its running statistics (the KL divergence between the two per-channel
  Gaussians, averaged: 0 means the inputs look like the pretraining data), and for tokenizers the sub-word
  pieces per word.

| size \\ similarity | high | low |
|---|---|---|
| few-shot (< 50 / class), no augmentation | contrastive body tuning + converged head | the same |
| small (< 100 / class) | feature extraction; head by L-BFGS (augmenting: the Trainer's) | full fine-tuning |
| medium (< 1,000) | discriminative LR (decay 0.8, head 4x) + gradual unfreezing within the first epoch | full fine-tuning |
| large | full fine-tuning | full fine-tuning |

Few-shot (issue 35, benchmarks/results/fewshot.md): with a few dozen rows per class, counting the head's training in
epochs gives it a handful of steps, and SetFit's contrastive first stage beat every strategy hftl had. Below 50
examples per class auto runs that stage (`contrastive`, num_iterations 4: SetFit's pairs at 8 / class, fewer
above) on the whole body, BatchNorm statistics kept, then fits the head to convergence (strategy.head_fit: lbfgs);
its verdict on similarity is reported but not needed. Not where training augments its inputs (data.augment): both
stages fit the head once on unaugmented features and drop the augmentation; on stamps (~25 / class, crop + flip)
that scored 0.779 against 0.836 for feature extraction with the Trainer's head on augmented views.

Where the seed says feature extraction (+ augmentation) for small data and "gradual unfreezing + discriminative LR"
for medium data from a far domain, hftl's own benchmarks measured full fine-tuning well above both (Fashion-MNIST at
~100 / class: 0.861 vs 0.819 frozen and 0.795 layered; spectrograms at 150 / class: 0.997 vs 0.883 and 0.930): a
far domain is where the frozen features are the bottleneck. The thresholds are calibrated on the zoo's training
sets only (three BatchNorm data sets, one text set): evidence, not a law. Every key the recipe sets explicitly
(strategy.*, and a contrastive: block) wins over the choice. training.learning_rate is the fine-tuning rate, as
the recipe gives it; a frozen backbone's head is fitted by L-BFGS (no learning rate, no epochs to get right).
"""

from __future__ import annotations

import math
import os
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hftl.data import Splits, batches
from hftl.errors import HftlError
from hftl.hooks import pooled_features, task_head, unwrap
from hftl.model import model_device
from hftl.recipe import ContrastiveSection, StrategySection
from hftl.recipe.checks import AUGMENT_TASKS
from hftl.strategy.plan import layer_map_for

PROBE_EXAMPLES = 1024  # a sample of the training split: the probe costs one frozen forward over it
SMALL, MEDIUM = 100, 1000  # examples per class (seed 001)
SEPARABLE = 0.5  # probe separability below this: the features do not fit the task
# BatchNorm inputs vs running statistics, Gaussian KL per channel (zoo: stamps 0.23, Fashion-MNIST 0.40, spectrograms 0.47)
BN_FAR = 0.3
FEWSHOT = 50  # examples per class below which contrastive body tuning + a converged head are chosen
FEWSHOT_ITERATIONS = 4  # contrastive.num_iterations: 8 pairs per example (SetFit 1.2's count at 8 / class)
PIECES_FAR = 2.0  # sub-word pieces per word: the tokenizer's vocabulary does not fit the text
DECAY, HEAD_FACTOR = 0.8, 4.0


@dataclass
class Decision:
    evidence: dict
    size: str
    similarity: str
    choice: str
    keys: dict  # strategy keys the choice set
    blocks: dict = field(default_factory=dict)  # top-level recipe blocks the choice set (contrastive)
    kept: list[str] = field(default_factory=list)  # keys the recipe set, kept over the choice
    reasons: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        e = self.evidence
        shift = "-" if e["bn_shift"] is None else f"{e['bn_shift']:.3f} over {e['bn_layers']} BatchNorm layers"
        pieces = "-" if e["pieces_per_word"] is None else f"{e['pieces_per_word']:.2f}"
        out = [f"Strategy chosen by `preset: auto`: **{self.choice}** (size {self.size}, domain similarity "
               f"{self.similarity}).", "",
               "| evidence (training split) | value |", "|---|---|",
               f"| training examples / classes | {e['train_examples']:,} / {e['classes']} |",
               f"| examples per class (median, min) | {e['per_class_median']:g}, {e['per_class_min']} |",
               f"| linear probe on frozen features ({e['probe_examples']} examples, {e['probe_folds']}-fold) | "
               f"balanced accuracy {e['probe_balanced_accuracy']:.3f} (chance {1 / e['classes']:.3f}), "
               f"separability {e['separability']:.2f} ± {e.get('separability_spread', 0):.2f} over the folds |",
               f"| BatchNorm inputs vs running statistics (Gaussian KL; far > {BN_FAR}) | {shift} |",
               f"| tokenizer pieces per word (far > {PIECES_FAR}) | {pieces} |", ""]
        out += [f"- {r}" for r in self.reasons]
        setting = ", ".join([f"{k}: {v}" for k, v in self.keys.items()] + [f"{k}: {v}" for k, v in self.blocks.items()])
        out.append(f"- Set: {setting}.")
        if self.kept:
            out.append(f"- Kept from the recipe (explicit keys win): {', '.join(self.kept)}.")
        return out

    def to_dict(self) -> dict:
        return {"choice": self.choice, "size": self.size, "similarity": self.similarity, "set": self.keys,
                "blocks": self.blocks, "kept": self.kept, "evidence": self.evidence}


def _first_head(model: nn.Module) -> nn.Module:
    head = task_head(model)
    if head is None:
        raise HftlError(f"Recipe key 'strategy.preset' is auto but no task head was found in "
                        f"{type(unwrap(model)).__name__} to probe its features; give the strategy explicitly (preset: "
                        "feature_extraction | partial | full).")
    return head


@torch.no_grad()
def _features(model: nn.Module, dataset, collator, batch_size: int = 32):
    """Frozen features at the head's input and BatchNorm inputs' per-channel moments, over `dataset`."""
    head = _first_head(model)
    feats: list[torch.Tensor] = []
    bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    moments = {id(m): [0.0, 0.0, 0] for m in bn}

    def grab(_module, args):
        feats.append(pooled_features(args[0].detach().float()).cpu())

    def stats(module, args):
        x = args[0].detach().float().transpose(0, 1).reshape(args[0].shape[1], -1)
        acc = moments[id(module)]
        acc[0] = acc[0] + x.sum(1)
        acc[1] = acc[1] + (x * x).sum(1)
        acc[2] += x.shape[1]

    hooks = [head.register_forward_pre_hook(grab)] + [m.register_forward_pre_hook(stats) for m in bn]
    was_training = model.training
    model.eval()
    try:
        for batch in batches(dataset, collator, batch_size, model_device(model)):
            model(**batch.inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    shifts = []
    for m in bn:  # KL(N(batch mean, var) || N(running mean, var)) per channel, averaged
        s, sq, n = moments[id(m)]
        if not n:
            continue
        mean = s / n
        running = m.running_var.float().cpu() + m.eps
        ratio = ((sq / n - mean * mean) / running).clamp_min(1e-8)
        kl = 0.5 * (ratio + (mean - m.running_mean.float().cpu()) ** 2 / running - 1 - ratio.log())
        shifts.append(kl.mean().item())
    return torch.cat(feats).numpy(), (float(np.mean(shifts)) if shifts else None), len(shifts)


def _probe(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float, int]:
    """Balanced accuracy of a logistic regression on standardised features, stratified k-fold (k <= 5): the mean,
    its standard deviation over the folds, k."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, min(Counter(y.tolist()).values()))
    if folds < 2:
        raise HftlError("Recipe key 'strategy.preset' is auto but a class has fewer than 2 training examples, too few "
                        "for the linear probe; give the strategy explicitly or add examples.")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_score(clf, x, y, cv=cv, scoring="balanced_accuracy")
    return float(scores.mean()), float(scores.std()), folds


def _pieces_per_word(tokenizer, rows, column: str) -> float | None:
    if not hasattr(tokenizer, "tokenize") or column not in rows.column_names:
        return None
    texts = [t for t in rows[column] if isinstance(t, str)]
    words = sum(len(t.split()) for t in texts)
    return sum(len(tokenizer.tokenize(t)) for t in texts) / words if words else None


def gather(task, splits, processor, data, model, seed: int) -> dict:
    """The evidence: counts, the probe, the input-statistics distances. Leaves the model and RNG as they were."""
    rows = [i for i, y in enumerate(splits.train["labels"]) if y >= 0]  # distill.unlabeled rows carry -100
    labelled = splits.train.select(rows)
    labels = labelled["labels"]
    counts = Counter(labels)
    sample = labelled.shuffle(seed=seed).select(range(min(PROBE_EXAMPLES, len(labelled))))
    # the task's evaluation preprocessing (no augmentation) applied to training rows
    # (a separate two-row train split: tasks set their transforms on each split in place)
    tiny = sample.select(range(min(2, len(sample))))
    _, prepared, collator = task.prepare(Splits(tiny, sample, splits.label_names), processor, data, model)
    state = (random.getstate(), np.random.get_state())
    with torch.random.fork_rng(devices=[]):
        x, shift, layers = _features(model, prepared, collator)
    random.setstate(state[0])
    np.random.set_state(state[1])
    y = np.asarray(sample["labels"])
    balanced, spread, folds = _probe(x, y, seed)
    k = len(splits.label_names)
    return {
        "train_examples": len(labels), "classes": k,
        "per_class_median": float(statistics.median([counts.get(i, 0) for i in range(k)])),
        "per_class_min": min(counts.get(i, 0) for i in range(k)),
        "probe_examples": len(sample), "probe_folds": folds, "probe_balanced_accuracy": round(balanced, 4),
        "separability": round(max(0.0, (balanced - 1 / k) / (1 - 1 / k)), 4),
        "separability_spread": round(spread / (1 - 1 / k), 4),
        "augmentable": task.name in AUGMENT_TASKS,  # data.augment applies (the seed's advice for far images)
        "augmenting": bool(task.augmenting(data)),  # training sees random transforms (data.augment on)
        "bn_shift": None if shift is None else round(shift, 4), "bn_layers": layers,
        "pieces_per_word": _round(_pieces_per_word(processor, sample, task.input_column(data))),
    }


def _round(v):
    return None if v is None else round(v, 4)


def decide(evidence: dict, learning_rate: float, steps_per_epoch: int, depths: int) -> Decision:
    """The table above, applied to the evidence. `depths`: the layer map's groups (for the unfreezing pace)."""
    e = evidence
    m = e["per_class_median"]
    size = "small" if m < SMALL else "medium" if m < MEDIUM else "large"
    reasons = [f"Size {size}: median {m:g} training examples per class (small < {SMALL}, medium < {MEDIUM}; seed 001)."]
    far = []
    spread = e.get("separability_spread", 0.0)
    if e["separability"] + spread < SEPARABLE:  # below the threshold by more than the folds disagree
        far.append(f"the frozen features separate the classes poorly (separability {e['separability']:.2f} ± "
                   f"{spread:.2f} < {SEPARABLE})")
    if e["bn_shift"] is not None and e["bn_shift"] > BN_FAR:
        far.append(f"the inputs are far from the backbone's BatchNorm statistics ({e['bn_shift']:.3f} > {BN_FAR})")
    if e["pieces_per_word"] is not None and e["pieces_per_word"] > PIECES_FAR:
        far.append(f"the tokenizer splits words into {e['pieces_per_word']:.2f} pieces (> {PIECES_FAR})")
    similarity = "low" if far else "high"
    reasons.append("Domain similarity low: " + "; ".join(far) + "." if far else
                   f"Domain similarity high: the frozen features separate the classes (separability "
                   f"{e['separability']:.2f} >= {SEPARABLE}) and the input statistics are close to the backbone's.")
    if abs(e["separability"] - SEPARABLE) <= spread:
        reasons.append(f"The probe's verdict is uncertain: separability {e['separability']:.2f} ± {spread:.2f} over "
                       f"its folds straddles {SEPARABLE}, so it does not count as a far domain (more labelled rows "
                       "would settle it).")
    blocks = {}
    augmenting = bool(e.get("augmenting"))
    if m < FEWSHOT and augmenting:
        reasons.append(f"Fewer than {FEWSHOT} examples per class, but training augments its inputs: the few-shot "
                       "stages fit the head once on unaugmented features, which drops the augmentation, so the table's "
                       "size row decides and the Trainer trains the head on augmented views (stamps at ~25 per class "
                       "with crop + flip: 0.836 this way, 0.779 contrastive + L-BFGS; results/quality_stamps.md).")
    if m < FEWSHOT and not augmenting:
        choice = "contrastive body tuning + converged head"
        keys = {"freeze": "none", "freeze_batchnorm": True, "head_fit": "lbfgs"}
        blocks = {"contrastive": {"num_iterations": FEWSHOT_ITERATIONS}}
        reasons.append(f"Few-shot: fewer than {FEWSHOT} examples per class. SetFit's two stages: the body tuned on "
                       f"pairs drawn from the labels ({2 * FEWSHOT_ITERATIONS} per example), then the head fitted to "
                       "convergence on it; at 8-32 tweets per class this beat feature extraction and full fine-tuning "
                       "(benchmarks/results/fewshot.md).")
    elif size == "small" and similarity == "high":
        choice = "feature extraction"
        keys = {"freeze": "backbone", "freeze_batchnorm": True}
        if augmenting:
            reasons.append("The frozen features separate the classes: the head alone, trained by the Trainer on "
                           "augmented views.")
        else:
            keys["head_fit"] = "lbfgs"
            reasons.append("The frozen features separate the classes: the head alone, fitted to convergence (L-BFGS) "
                           "rather than for the recipe's epochs.")
    elif size == "medium" and similarity == "high":
        every = max(1, steps_per_epoch // max(depths, 1))
        choice = "discriminative LR + gradual unfreezing"
        keys = {"freeze": "none", "discriminative_lr": {"layer_decay": DECAY, "head_lr": HEAD_FACTOR * learning_rate},
                "gradual_unfreezing": {"every_steps": every}}
        reasons.append(f"ULMFiT: head at {HEAD_FACTOR:g}x the learning rate, x{DECAY} per depth below it; one more "
                       f"depth group every {every} steps, all {depths} trainable within the first epoch.")
    else:
        choice, keys = "full fine-tuning", {"freeze": "none", "freeze_batchnorm": False}
        if similarity == "low" and size != "large":
            seed = ("feature extraction" + (" + augmentation" if e.get("augmentable") else "") if size == "small"
                    else "gradual unfreezing + discriminative LR")
            reasons.append(f"A far domain: the seed's cell says {seed}; hftl's benchmarks on far domains "
                           "(Fashion-MNIST, spectrograms) measured full fine-tuning well above it.")
    return Decision(e, size, similarity, choice, keys, blocks, reasons=reasons)


def _explicit(strategy) -> set[str]:
    return {k for k in strategy.model_fields_set if getattr(strategy, k) not in (None, [])}


def resolve(recipe, task, splits, processor, model):
    """(the recipe with the chosen strategy filled in, the Decision). Explicit keys are kept."""
    training = recipe.training
    lr = float(training.get("learning_rate", 5e-5))
    batch = int(training.get("per_device_train_batch_size", 8)) * int(training.get("gradient_accumulation_steps", 1))
    world = int(os.environ.get("WORLD_SIZE", 1))
    steps = math.ceil(len(splits.train) / (batch * world))
    depths = layer_map_for(model, recipe.strategy).head_depth + 1
    evidence = gather(task, splits, processor, recipe.data, model, recipe.seed)
    decision = decide(evidence, lr, steps, depths)
    explicit = _explicit(recipe.strategy)
    decision.kept = sorted(f"strategy.{k}" for k in decision.keys if k in explicit)
    chosen = {k: v for k, v in decision.keys.items() if k not in explicit}
    strategy = StrategySection.model_validate({**recipe.strategy.model_dump(exclude_unset=True), **chosen})
    update = {"strategy": strategy}
    if "contrastive" in decision.blocks:
        if recipe.contrastive is None:
            update["contrastive"] = ContrastiveSection.model_validate(decision.blocks["contrastive"])
        else:
            decision.kept.append("contrastive")
    return recipe.model_copy(update=update), decision
