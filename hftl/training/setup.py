"""Build a run from a recipe, in dependency order (torchtune's recipes read this way): data -> model -> strategy
-> arguments and plan -> datasets and pre-flight -> feature cache. Each `_setup_x` step needs the ones before it;
the optional blocks (training/features/) plug into the steps without being named here. Writes nothing: `hftl plan`
is this and a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import set_seed

from hftl.data import Splits, join_rows, load_splits
from hftl.errors import HftlError
from hftl.hooks import find_head
from hftl.model import build_model, build_peft_model, load_processor, pooling_of
from hftl.recipe import Recipe
from hftl.recipe.training import engine_places_model
from hftl.runs.hub import base_model_id
from hftl.runs.space import check_space
from hftl.strategy import apply_reinit, plan_strategy
from hftl.strategy.auto import resolve
from hftl.tasks import get_task
from hftl.training.cache import FeatureCache, why_not
from hftl.training import speed
from hftl.training.features import Feature, for_recipe
from hftl.training.preflight import check_first_step


@dataclass
class Setup:
    """Everything built from a recipe before training starts (also what `hftl plan` shows)."""

    recipe: Recipe
    task: Any
    features: list[Feature] = field(default_factory=list)
    splits: Splits | None = None
    processor: Any = None
    model: Any = None
    decision: Any = None  # strategy.preset auto: the choice and its evidence
    args: Any = None
    plan: Any = None
    train_dataset: Any = None
    eval_dataset: Any = None
    collator: Any = None
    device: Any = None
    inputs_vary: bool = False  # a training example reaches the model differently each epoch
    cache: FeatureCache | None = None  # backbone features computed once
    train_lengths: list[int] | None = None  # each training example's token count (length-grouped batches)
    micro_batch: int | None = None  # length-sorted micro-batches of this size (training/speed.py)


class PseudoLabelled(Feature):
    """Rows a caller adds to the training split: self-training's pseudo-labelled target rows."""

    name = "pseudo_labels"

    def __init__(self, rows):
        self.rows = rows

    def add_rows(self, s) -> None:
        s.splits.train = join_rows(s.splits.train, self.rows, "self_training.unlabeled")


def setup(recipe: Recipe, extra_train=None, features: tuple = ()) -> Setup:
    """Build data, model and strategy; writes nothing. `extra_train`: rows added to the training split (load_splits'
    form, a `labels` column of class ids: self-training's pseudo-labels). `features`: a caller's own, before the
    recipe's (a sweep trial's held-out slice)."""
    set_seed(recipe.seed)
    task = get_task(recipe.task)
    extra = [PseudoLabelled(extra_train)] if extra_train is not None else []
    s = Setup(recipe, task, list(features) + for_recipe(recipe, task) + extra)
    _setup_data(s)
    _setup_model(s)
    _setup_strategy(s)
    _setup_arguments(s)
    _setup_datasets(s)
    _setup_cache(s)
    _setup_speed(s)
    return s


def _setup_data(s: Setup) -> None:
    """The splits, labels encoded (a feature may fix the first ids: a previous run's labels), then the rows the
    features add (replay, a transfer set, pseudo-labels)."""
    first = next((f.first_labels for f in s.features if f.first_labels), None)
    s.splits = load_splits(s.recipe.data, s.recipe.seed, s.task, first)
    for f in s.features:
        f.add_rows(s)


def _setup_model(s: Setup) -> None:
    """The processor and the model: the checkpoint with a head for the labels, or a feature's model (a previous
    run's, a teacher's blocks); the task's own changes; the processor as the run evaluates with it and saves it."""
    recipe = s.recipe
    s.processor = load_processor(s.task, recipe.model, recipe.data)
    model = None
    for f in s.features:
        given = f.model(s)
        model = given if given is not None else model
    s.model = model if model is not None else build_model(s.task, recipe.model, s.splits.label_names, recipe.data)
    s.task.configure_model(s.model, recipe.model)
    # so that plain transformers loads preprocess as the run did
    s.processor = s.task.portable_processor(s.processor, recipe.data, s.model)
    _check_push(recipe, s.model)


def _setup_strategy(s: Setup) -> None:
    """preset auto resolved from evidence on the training split, re-initialisation, then PEFT (re-initialising
    after it would undo the adapter's own init)."""
    if s.recipe.strategy.preset == "auto":
        s.recipe, s.decision = resolve(s.recipe, s.task, s.splits, s.processor, s.model)
        have = {type(f) for f in s.features}  # the blocks the choice turned on (contrastive, head_fit)
        s.features += [f for f in for_recipe(s.recipe, s.task) if type(f) not in have]
    apply_reinit(s.model, s.recipe.strategy)
    if s.recipe.peft is None:
        return
    s.model = build_peft_model(s.model, s.recipe.peft, s.task.peft_task_type, find_head(s.model),
                               s.task.adapter_modules(s.model), s.task.peft_targets(s.model))
    # The adapter config names its base by Hub id where one is known (zoo origin, hub.base_model), not by a path
    # on this disk; hftl itself keeps loading the base from the recipe (offline for zoo models).
    origin = base_model_id(s.recipe)
    if origin is not None:
        for config in s.model.peft_config.values():
            config.base_model_name_or_path = origin


def _setup_arguments(s: Setup) -> None:
    """TrainingArguments (the task's and the features' defaults, the recipe's keys winning) and the plan: every
    parameter's learning rate, what trains when."""
    recipe = s.recipe
    training = {k: v for k, v in recipe.training.items() if k != "resume_from_checkpoint"}
    defaults = s.task.training_defaults(recipe.data, recipe.generation)
    defaults.update(speed.training_defaults(recipe.training))
    for f in s.features:
        defaults.update(f.training_defaults())
    s.args = s.task.trainer_classes()[1](**{**defaults, **training})
    s.plan = plan_strategy(s.model, recipe.strategy, learning_rate=s.args.learning_rate,
                           distributed=s.args.world_size > 1)
    s.plan.decision = s.decision


def _setup_datasets(s: Setup) -> None:
    """The task's datasets and collator, one training step as a pre-flight (on the device the Trainer will use),
    then the features' own parts."""
    s.train_dataset, s.eval_dataset, s.collator = s.task.prepare(s.splits, s.processor, s.recipe.data, s.model)
    s.device = _preflight_device(s.model, s.recipe, s.args)
    check_first_step(s.model, s.train_dataset, s.collator, s.recipe, s.device, s.task)
    s.inputs_vary = s.task.augmenting(s.recipe.data) or any(f.varies_inputs for f in s.features)
    for f in s.features:
        f.prepared(s)
    s.plan.notes = [line for f in s.features for line in f.plan_lines()]


def _setup_cache(s: Setup) -> None:
    """A FeatureCache when strategy.cache_features allows and the run qualifies (see training/cache.py)."""
    mode = s.recipe.strategy.cache_features
    if mode is False:
        return
    reason = why_not(s.model, s.plan, s.recipe.strategy, s.inputs_vary)
    reason = reason or next((r for f in s.features if (r := f.blocks_cache()) is not None), None)
    if reason is not None:
        if mode is True:
            raise HftlError(f"Recipe key 'strategy.cache_features' is true but {reason}.")
        return
    s.cache = FeatureCache(s.model, s.collator, batch_size=s.args.per_device_eval_batch_size)


def _setup_speed(s: Setup) -> None:
    """The speed defaults that need the built run (training/speed.py), named in the plan's header."""
    line = speed.plan_line(speed.apply(s))
    if line:
        s.plan.notes.append(line)


def _check_push(recipe: Recipe, model) -> None:
    """What hub.push would upload must load for whoever downloads it; refused before training otherwise:
    with hub.strict, a base model known only by a local path; with hub.space, an adapter the Space could not rebuild; and a mean/cls-pooled adapter alone (PEFT's
    loaders put it on the base model's own pooler, so it would predict differently)."""
    if recipe.hub.push and recipe.hub.strict and base_model_id(recipe) is None:
        raise HftlError(
            f"Recipe key 'hub.strict' is true but the base model '{recipe.model.source}' is a local "
            "folder with no Hub id: set hub.base_model to the Hub id it came from (or hub.strict: false to push "
            "with a warning).")
    if recipe.hub.push and recipe.hub.space:  # the Space serves the pushed repo: it must be able to start
        check_space(recipe.output_dir, recipe.hub, recipe, recipe.peft is not None and recipe.hub.upload != "merged")
    pooling = pooling_of(model)
    if recipe.peft is None or pooling == "default" or not recipe.hub.push or recipe.hub.upload != "adapter":
        return
    raise HftlError(
        f"Recipe key 'hub.upload': 'adapter' alone would load wrong for others: the model trains on {pooling} "
        f"pooling (model.pooling: {recipe.model.pooling}), which PEFT's loaders do not restore (they put the adapter "
        "on the base model's own pooler). Set hub.upload: merged or both with peft.merge: true (the merged model "
        "carries the pooling; loading it needs trust_remote_code=True), or model.pooling: default.")


def _preflight_device(model, recipe: Recipe, args):
    """Where the Trainer will put the model (so the pre-flight runs there): args.device, unless DeepSpeed or
    FSDP place it themselves -- then where it is now."""
    if engine_places_model(recipe.training):
        return next(model.parameters()).device
    model.to(args.device)
    return args.device
