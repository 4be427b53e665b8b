"""Continual fine-tuning (`continual:`): a run that continues a previous run on new data.

The model starts as the previous run's trained model (an adapter merged in memory). Against forgetting:
`replay` mixes a seeded sample of the old data into the training rows; `ewc` adds elastic weight consolidation,
lambda / 2 * sum_i F_i (theta_i - theta_old_i)^2 (Kirkpatrick et al. 2017), F the diagonal Fisher of the
previous model on the old data, estimated once with labels sampled from the model's own predictions and
stored in the previous run dir (ewc_fisher.safetensors, keyed by the data and sample count). Old and new
accuracy are measured before training (the previous model) and after (this run): metrics.json, the card and
forgetting.png show what the new data cost the old task.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from hftl.data import batches, join_rows, load_splits
from hftl.errors import HftlError
from hftl.hooks import find_head, unwrap
from hftl.model import model_device
from hftl.runs.evaluate import labelled_data, metrics_of, score_prepared
from hftl.runs.load import load_model, prepare_eval, read_run
from hftl.training.features.base import Feature
from hftl.training.preflight import rng_kept

logger = logging.getLogger("hftl")

FISHER_FILE = "ewc_fisher.safetensors"


def _read_previous(section):
    path = Path(section.previous)
    if not (path / "recipe.yaml").is_file():
        raise HftlError(f"Recipe key 'continual.previous': '{section.previous}' is not an hftl run dir (no "
                        "recipe.yaml); give the training.output_dir of the run to continue.")
    return read_run(path)


def previous_labels(section) -> list[str]:
    return list(_read_previous(section).label_names)


def previous_run(section, task, label_names: list[str]):
    """The previous run: the same task, and the same labels as this recipe's data -- or, with new_classes, the
    previous run's labels first and then the data's new ones (the run returned carries them all)."""
    run = _read_previous(section)
    if run.task.name != task.name:
        raise HftlError(f"Recipe key 'continual.previous': '{section.previous}' is a {run.task.name} run; this "
                        f"recipe's task is {task.name}.")
    names = list(run.label_names)
    if names != list(label_names) and not section.new_classes:
        raise HftlError(f"Recipe key 'continual.previous': the previous run's labels {run.label_names} are not the "
                        f"data's {label_names}; continual fine-tuning keeps one head, so the new data must use the "
                        "same classes -- or set continual.new_classes: true to grow the head by the new ones.")
    return replace(run, label_names=list(label_names))


def previous_model(section, run):
    """The previous run's trained model (an adapter merged in memory), its head grown where `run` (previous_run's)
    has more labels than the model."""
    model = load_model(run.path)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if len(run.label_names) != unwrap(model).config.num_labels:  # new_classes: the previous labels come first
        grow_head(model, list(run.label_names))
    return model.train()


def grow_head(model, names: list[str]) -> str:
    """Class-incremental head growth: the head's output layer (the last Linear with one output per old class) gets
    one more output per new class; old rows are kept, new rows start as the mean of the old ones (so the new
    classes' logits start at the mean of the old logits: no old prediction changes). Returns the layer's name."""
    task = unwrap(model)
    n_old = task.config.num_labels
    layers = [(f"{h}.{n}" if n else h, m) for h in find_head(model) for n, m in task.get_submodule(h).named_modules()
              if isinstance(m, nn.Linear) and m.out_features == n_old]
    if not layers:
        raise HftlError(f"Recipe key 'continual.new_classes': {type(task).__name__}'s head has no linear layer with one "
                        f"output per previous class ({n_old}) to grow.")
    name, old = layers[-1]
    new = nn.Linear(old.in_features, len(names), bias=old.bias is not None, device=old.weight.device,
                    dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[:n_old] = old.weight
        new.weight[n_old:] = old.weight.mean(0)
        if old.bias is not None:
            new.bias[:n_old] = old.bias
            new.bias[n_old:] = old.bias.mean()
    owner, _, attr = name.rpartition(".")
    setattr(task.get_submodule(owner) if owner else task, attr, new)
    config = task.config
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    for module in (task, getattr(task, "timm_model", None)):  # the models keep their own counts too
        for attr in ("num_labels", "num_classes"):
            if module is not None and hasattr(module, attr) and isinstance(getattr(module, attr), int):
                setattr(module, attr, len(names))
    logger.info("continual: %s grown from %d to %d classes (%s)", name, n_old, len(names), ", ".join(names[n_old:]))
    return name


def old_rows(run, path: str | None, key: str):
    """Labelled old data: a file/folder, or (None) the previous run's own split (`key`: replay -> train)."""
    if path is not None:
        return labelled_data(run, path, f"Recipe key 'continual.{key}':")
    splits = load_splits(run.recipe.data, run.recipe.seed, run.task)
    return splits.train if key == "replay.data" else splits.validation


def replay_sample(section, run, n_new: int, seed: int):
    old = old_rows(run, section.replay.data, "replay.data")
    n = min(len(old), max(1, round(section.replay.fraction * n_new)))
    return old.shuffle(seed=seed).select(range(n))


class Ewc:
    """The EWC penalty: lambda / 2 * sum F (theta - theta_old)^2 over the parameters that have a Fisher entry and
    train."""

    def __init__(self, model, fisher: dict[str, torch.Tensor], strength: float):
        params = dict(model.named_parameters())
        self.names = [n for n in fisher if n in params]
        self.anchor = {n: params[n].detach().clone() for n in self.names}
        self.fisher = {n: fisher[n].to(params[n].device) for n in self.names}
        self.strength = strength

    def __call__(self, model, inputs, outputs) -> torch.Tensor:
        params = {n.removeprefix("module."): p for n, p in model.named_parameters()}  # DDP wraps the model
        total = 0.0
        for n in self.names:
            p = params.get(n)
            if p is not None and p.requires_grad:
                self.anchor[n], self.fisher[n] = self.anchor[n].to(p.device), self.fisher[n].to(p.device)
                total = total + (self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
        return self.strength / 2 * total


def fisher(model, run, data, collate, samples: int, source: str, seed: int) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of `model` on the first `samples` rows of prepared old data: the mean squared gradient of
    log p(y | x), y drawn from the model's own prediction. Read from / stored in the previous run dir."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = run.path / FISHER_FILE
    # the labels too: with new_classes the head (so the Fisher's shapes) has them all
    key = {"data": source, "samples": str(samples), "seed": str(seed), "labels": ",".join(run.label_names)}
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            if f.metadata() == key:
                logger.info("EWC: the Fisher from %s", path)
                return load_file(str(path))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p, device="cpu") for n, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    was_training, count = model.training, 0
    model.eval()  # no dropout: the Fisher of the model as it predicts
    n = min(samples, len(data))
    for batch in batches(data.select(range(n)), collate, 1, model_device(model)):
        model.zero_grad(set_to_none=True)
        logits = model(**batch.inputs).logits.float()
        log_p = torch.log_softmax(logits, dim=-1)
        y = torch.multinomial(log_p.detach().exp().cpu(), 1, generator=generator).to(log_p.device)
        log_p.gather(-1, y).sum().backward()
        for name, p in params.items():
            if p.grad is not None:
                total[name] += p.grad.detach().cpu() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    result = {name: t / max(count, 1) for name, t in total.items()}
    try:
        save_file({k: v.contiguous() for k, v in result.items()}, str(path), metadata=key)
    except OSError as e:  # a read-only previous run: compute again next time
        logger.warning("EWC: could not store the Fisher in %s (%s)", path, e)
    return result


class Forgetting:
    """Old and new accuracy (and macro-F1) before and after training; the card lines and the plot."""

    def __init__(self, run, old_data, old_collate, new_data, new_collate, batch_size: int):
        self.run, self.batch_size = run, batch_size
        self.sets = {"old": (old_data, old_collate), "new": (new_data, new_collate)}
        self.scores: dict[str, dict[str, float]] = {}

    def measure(self, when: str, model) -> None:
        was_training = model.training
        model.eval()
        for name, (data, collate) in self.sets.items():
            scored = score_prepared(self.run.task, model, data, collate, [""] * len(data), self.batch_size)
            m = metrics_of(self.run, scored.probs, scored.true)
            self.scores[f"{name}_{when}"] = {k.removeprefix("eval_"): v for k, v in m.items()}
        model.train(was_training)

    def metrics(self) -> dict:
        return {f"continual_{k}_{m}": v for k, s in self.scores.items() for m, v in s.items()}

    def card_lines(self, section) -> list[str]:
        keys = sorted({m for s in self.scores.values() for m in s})
        lines = ["", "## Continual fine-tuning (forgetting)", "",
                 f"Continued from `{section.previous}`" + (f"; replay: {section.replay.fraction:.0%} of the new rows "
                 f"sampled from {section.replay.data or 'its training split'}" if section.replay else "") +
                 (f"; EWC lambda {section.ewc.lambda_:g} on a Fisher from {section.ewc.samples} old examples"
                  if section.ewc else "") + ". Old data: " + (section.old_eval or "the previous run's validation split")
                 + "; new data: this run's validation split.", "",
                 "| data | " + " | ".join(f"{k} before | {k} after | change" for k in keys) + " |",
                 "|---|" + "---:|---:|---:|" * len(keys)]
        for name in ("old", "new"):
            b, a = self.scores.get(f"{name}_before", {}), self.scores.get(f"{name}_after", {})
            cells = [f"{b[k]:.4f} | {a[k]:.4f} | {a[k] - b[k]:+.4f}" if k in a and k in b else "- | - | -" for k in keys]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return lines + ["", "![forgetting](forgetting.png)"]

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for i, when in enumerate(("before", "after")):
            values = [self.scores.get(f"{d}_{when}", {}).get("accuracy", 0.0) for d in ("old", "new")]
            ax.bar([x + 0.38 * i for x in (0, 1)], values, width=0.36, label=when)
        ax.set_xticks([0.19, 1.19], ["old data", "new data"])
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title("continual: before vs after")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


class Continual(Feature):
    """`continual:` as a training block: the previous run's model and labels, replay rows, the EWC term (its Fisher
    computed, and stored in the previous run dir, only when training starts) and forgetting measured before and
    after."""

    name = "continual"
    loss_name = "ewc"

    def __init__(self, section):
        self.section = section
        self.first_labels = previous_labels(section) if section.new_classes else None
        self.previous = self.ewc = self.forgetting = None
        self.fisher_source = None

    @classmethod
    def from_recipe(cls, recipe, task):
        return cls(recipe.continual) if recipe.continual is not None else None

    def add_rows(self, s) -> None:
        self.previous = previous_run(self.section, s.task, s.splits.label_names)
        if self.section.replay is not None:
            old = replay_sample(self.section, self.previous, len(s.splits.train), s.recipe.seed)
            s.splits.train = join_rows(s.splits.train, old, "continual.replay.data")

    def model(self, s):
        return previous_model(self.section, self.previous)

    def prepared(self, s) -> None:
        self.model_ = s.model
        self.seed = s.recipe.seed
        self.processor = s.processor
        old_eval, old_collate = prepare_eval(self.previous, old_rows(self.previous, self.section.old_eval, "old_eval"),
                                             s.processor, s.model)
        self.forgetting = Forgetting(self.previous, old_eval, old_collate, s.eval_dataset, s.collator,
                                     s.args.per_device_eval_batch_size)

    def before_train(self, s, resume: str | None) -> None:
        with rng_kept():
            if self.section.ewc is not None:
                self.ewc = Ewc(self.model_, self._fisher(), self.section.ewc.lambda_)
            self.forgetting.measure("before", self.model_)

    def _fisher(self):
        """EWC's diagonal Fisher of the previous model on the old data (replay.data, else its training split)."""
        source = self.section.replay.data if self.section.replay is not None else None
        rows = old_rows(self.previous, source, "replay.data").shuffle(seed=self.seed)
        data, collate = prepare_eval(self.previous, rows, self.processor, self.model_)
        return fisher(self.model_, self.previous, data, collate, self.section.ewc.samples, source or "training split",
                      self.seed)

    def loss_term(self, model, inputs: dict, outputs):
        return self.ewc(model, inputs, outputs) if self.ewc is not None else None

    def final_metrics(self, trainer) -> dict:
        self.forgetting.measure("after", trainer.accelerator.unwrap_model(trainer.model))
        return self.forgetting.metrics()

    def report(self, out: Path) -> list[str]:
        self.forgetting.plot(out / "forgetting.png")
        return self.forgetting.card_lines(self.section)
