"""Run a recipe once: check the output dir -> build (setup.py) -> Trainer -> train -> final metrics -> outputs
(finish.py) -> Hub. The optional blocks plug in through their hooks; nothing here names one. With
`num_train_epochs: 0` the model is scored as it is: the same run dir, no optimizer step."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftl.errors import HftlError
from hftl.recipe import Recipe
from hftl.recipe.training import trains
from hftl.runs.hub import push_output_dir
from hftl.training.features import overrides
from hftl.training.faults import Interrupted, StopOnSignal, checkpoint_problem, last_good_checkpoint
from hftl.training.finish import eval_scores, write_outputs
from hftl.training.setup import Setup, setup
from hftl.training.trainer import HftlTrainer

logger = logging.getLogger("hftl")


@dataclass
class TrainResult:
    model: Any
    trainer: Any
    metrics: dict
    output_dir: Path
    plan: Any = None
    label_names: list[str] = field(default_factory=list)
    push_error: str | None = None  # hub.push failed (the output dir is complete); the message says why
    rounds: list[dict] = field(default_factory=list)  # self-training: one record per round


def resume_path(recipe: Recipe) -> str | None:
    """`true`: the newest *complete* checkpoint (a save cut short by a crash is skipped); a path: checked."""
    value = recipe.training.get("resume_from_checkpoint")
    if value in (None, False):
        return None
    out = recipe.output_dir
    if value is True:
        last = last_good_checkpoint(out)
        if last is None:
            raise HftlError(f"Recipe key 'training.resume_from_checkpoint' is true but '{out}' holds no complete "
                            "checkpoint-* folder.")
        return str(last)
    path = Path(str(value))
    if not path.is_dir():
        raise HftlError(f"Recipe key 'training.resume_from_checkpoint': '{value}' is not a checkpoint folder.")
    problem = checkpoint_problem(path)
    if problem:
        raise HftlError(f"Recipe key 'training.resume_from_checkpoint': '{value}' is not a complete checkpoint "
                        f"({problem}); resume from an earlier checkpoint-* or use true for the newest complete one.")
    return str(path)


def check_output_dir(recipe: Recipe, resuming: bool) -> None:
    out = recipe.output_dir
    if out.exists() and not out.is_dir():
        raise HftlError(f"Recipe key 'training.output_dir': '{out}' exists and is a file, not a folder.")
    if out.is_dir() and any(out.iterdir()) and not (recipe.overwrite_output_dir or resuming):
        raise HftlError(
            f"Recipe key 'training.output_dir': '{out}' is not empty. Choose another folder, set "
            "overwrite_output_dir: true, or resume with training.resume_from_checkpoint: true.")


def train_once(recipe: Recipe, callbacks: list | None = None, extra_train=None, features: tuple = ()) -> TrainResult:
    """One training run (`hftl.train` without its multi-round blocks); `extra_train`: rows added to the training
    split; `features`: a caller's own training blocks (training/features/base.py), before the recipe's."""
    resume = resume_path(recipe)
    check_output_dir(recipe, resume is not None)
    out = recipe.output_dir
    created = not out.exists()
    try:
        s = setup(recipe, extra_train, features)
        for f in s.features:
            f.before_train(s, resume)
        trainer = make_trainer(s)
        stop = StopOnSignal()
        trainer.add_callback(stop)
        for cb in callbacks or []:
            trainer.add_callback(cb)
    except BaseException:
        # Never leave a half-written output dir behind for a run that did not start.
        if created and out.exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    if trains(recipe.training):  # num_train_epochs: 0 scores the model as it is
        instead = [f for f in s.features if overrides(f, "train")]  # e.g. a head fitted in closed form
        if instead:
            instead[0].train(trainer)
        else:
            trainer.train(resume_from_checkpoint=resume)
    if stop.signum is not None:
        raise Interrupted(
            f"Training stopped by signal {stop.signum} at step {trainer.state.global_step}; checkpoint saved in "
            f"'{out}'. Resume with training.resume_from_checkpoint=true.", stop.signum)
    for f in s.features:
        f.after_train(trainer)
    metrics = final_metrics(trainer)
    # the per-class report's predictions, while cached features can still serve them
    scored = eval_scores(s, trainer) if trainer.is_world_process_zero() else None
    if s.cache is not None:  # the real backbone forward again: the returned/saved model is a normal one
        s.cache.restore()
        # and the Trainer's data the real inputs again, so result.trainer.evaluate() / predict() still work
        trainer.train_dataset, trainer.eval_dataset, trainer.data_collator = s.train_dataset, s.eval_dataset, s.collator
        metrics["cached_features"] = True
    for f in s.features:
        metrics.update(f.final_metrics(trainer))
    history = trainer.state.log_history
    metrics["train_runtime"] = next((e["train_runtime"] for e in reversed(history) if "train_runtime" in e), None)
    if trainer.is_world_process_zero():
        write_outputs(s, trainer, metrics, scored)
    trainer.accelerator.wait_for_everyone()
    push_error = None
    if recipe.hub.push and trainer.is_world_process_zero():
        try:
            push_output_dir(out, recipe.hub)
        except HftlError as e:
            # Training succeeded and its outputs are on disk: keep the result (model, metrics), report the push.
            logger.error("%s", e)
            push_error = str(e)
    return TrainResult(s.model, trainer, metrics, out, s.plan, s.splits.label_names, push_error)


def final_metrics(trainer) -> dict:
    """The metrics of the model as trained: the last evaluation when it was at the last step (with
    eval_strategy epoch, the end of the last epoch), else one evaluation now."""
    last = trainer.last_evaluation
    if last is not None and last.step == trainer.state.global_step:
        return dict(last.metrics)
    return dict(trainer.evaluate())


def make_trainer(s: Setup, mixins: tuple = ()) -> HftlTrainer:
    """The Trainer for a setup: the task's Trainer class under HftlTrainer (and `mixins`, e.g. lr-find's
    scheduler), on cached backbone features where the run has them."""
    train_ds, eval_ds, collator = s.train_dataset, s.eval_dataset, s.collator
    if s.cache is not None:
        cached = s.cache.datasets(train_ds, eval_ds)
        s.cache.patch()
        if s.cache.works(cached[0]):
            (train_ds, eval_ds), collator = cached, s.cache.collate
        elif s.recipe.strategy.cache_features is True:
            raise HftlError(f"Recipe key 'strategy.cache_features' is true but {type(s.model).__name__} does not "
                            "pass extra inputs to its backbone; set it to auto or false.")
        else:
            s.cache = None
    base = s.task.trainer_classes()[0]
    bases = (*mixins, HftlTrainer) if issubclass(HftlTrainer, base) else (*mixins, HftlTrainer, base)
    cls = bases[0] if len(bases) == 1 else type(f"Hftl{base.__name__}", bases, {})
    return cls(
        model=s.model, args=s.args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
        processing_class=s.processor, compute_metrics=s.task.metrics_for(s.splits.label_names, s.processor),
        preprocess_logits_for_metrics=s.task.preprocess_logits_for_metrics, callbacks=s.plan.callbacks, plan=s.plan,
        on_nan_loss=s.recipe.on_nan_loss, task=s.task, features=s.features, train_lengths=s.train_lengths,
        micro_batch=s.micro_batch)
