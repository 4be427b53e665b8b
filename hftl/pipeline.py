"""One recipe, one flow: load -> data -> model -> strategy -> Trainer -> train -> evaluate -> outputs -> Hub."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftl.errors import HftlError
from hftl.faults import StopOnSignal
from hftl.recipe import Recipe, load_recipe

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


@dataclass
class Setup:
    """Everything built from a recipe before training starts (also what `hftl plan` shows)."""

    recipe: Recipe
    task: Any
    splits: Any
    processor: Any
    model: Any
    args: Any
    plan: Any
    train_dataset: Any = None
    eval_dataset: Any = None
    collator: Any = None
    cache: Any = None  # FeatureCache when backbone features are computed once
    forgetting: Any = None  # continual: old/new scores before and after training
    loss_terms: list = field(default_factory=list)  # added to the task loss in training (distillation, ...)


def _resume_path(recipe: Recipe) -> str | None:
    """`true`: the newest *complete* checkpoint (a save cut short by a crash is skipped); a path: checked."""
    from hftl.faults import checkpoint_problem, last_good_checkpoint

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


def _check_output_dir(recipe: Recipe, resuming: bool) -> None:
    out = recipe.output_dir
    if out.exists() and not out.is_dir():
        raise HftlError(f"Recipe key 'training.output_dir': '{out}' exists and is a file, not a folder.")
    if out.is_dir() and any(out.iterdir()) and not (recipe.overwrite_output_dir or resuming):
        raise HftlError(
            f"Recipe key 'training.output_dir': '{out}' is not empty. Choose another folder, set "
            "overwrite_output_dir: true, or resume with training.resume_from_checkpoint: true.")


def setup(recipe: Recipe, extra_train=None) -> Setup:
    """Build data, model and strategy. Writes nothing. `extra_train`: rows added to the training split (load_splits'
    form, a `labels` column of class ids: self-training's pseudo-labels)."""
    from transformers import set_seed

    from hftl import models
    from hftl.adapters import build_peft_model
    from hftl.data import load_splits
    from hftl.hooks import find_head
    from hftl.strategy import apply_reinit, plan_strategy
    from hftl.tasks import get_task

    set_seed(recipe.seed)
    task = get_task(recipe.task)
    first = None
    if recipe.continual is not None and recipe.continual.new_classes:
        from hftl.continual import previous_labels

        first = previous_labels(recipe.continual)  # old classes keep their ids; new ones follow
    splits = load_splits(recipe.data, recipe.seed, task, first)
    previous = None
    if recipe.continual is not None:
        from hftl.continual import previous_run, replay_sample

        if recipe.continual.ewc is not None and recipe.peft is not None:
            raise HftlError("Recipe key 'continual.ewc' keeps the previous run's weights close to where they were; with "
                        "peft those weights are frozen and only a new adapter trains. Use continual.replay, or drop peft.")
        previous, model = previous_run(recipe.continual, task, splits.label_names)
        if recipe.continual.replay is not None:
            old = replay_sample(recipe.continual, previous, len(splits.train), recipe.seed)
            splits.train = _joined(splits.train, old, "continual.replay.data")
    if extra_train is not None:
        splits.train = _joined(splits.train, extra_train, "self_training.unlabeled")
    if recipe.distill is not None and recipe.distill.unlabeled:
        from hftl.distill import transfer_rows

        splits.train = _joined(splits.train, transfer_rows(recipe, task, splits.label_names), "distill.unlabeled")
    processor = models.load_processor(task, recipe.model, recipe.data)
    if previous is None:
        model = models.build_model(task, recipe.model, splits.label_names, recipe.data)
    teacher = order = None
    if recipe.distill is not None:
        from hftl.distill import load_teacher, truncate

        teacher, order = load_teacher(recipe.distill, task, recipe.model, recipe.data, splits.label_names)
        if recipe.distill.student_from_teacher is not None:
            model = truncate(teacher, recipe.distill.student_from_teacher.layers)
            if order is not None:
                raise HftlError("Recipe key 'distill.student_from_teacher': the teacher orders its labels differently "
                                "from the data; give the data the teacher's label order.")
    task.configure_model(model, recipe.model)
    # What the run evaluates with and saves, so plain transformers loads preprocess as the run did.
    processor = task.portable_processor(processor, recipe.data, model)
    _check_push(recipe, model)
    fisher = None
    if previous is not None and recipe.continual.ewc is not None:
        fisher = _old_fisher(recipe, previous, processor, model)
    decision = None
    if recipe.strategy.preset == "auto":
        from hftl.auto_strategy import resolve

        recipe, decision = resolve(recipe, task, splits, processor, model)
    apply_reinit(model, recipe.strategy)
    if recipe.peft is not None:
        model = build_peft_model(model, recipe.peft, task.peft_task_type, find_head(model), task.adapter_modules(model))
        from hftl.runs.hub import base_model_id

        # The adapter config names its base by Hub id where one is known (zoo origin, hub.base_model), not by
        # a path on this disk; hftl itself keeps loading the base from the recipe (offline for zoo models).
        origin = base_model_id(recipe)
        if origin is not None:
            for config in model.peft_config.values():
                config.base_model_name_or_path = origin
    training = {k: v for k, v in recipe.training.items() if k != "resume_from_checkpoint"}
    args_class = task.trainer_classes()[1]
    defaults = task.training_defaults(recipe.data, recipe.generation)
    reg = recipe.regularization
    if reg.label_smoothing and not reg.mixing:  # with mixup / cutmix it is folded into the mixed targets
        defaults["label_smoothing_factor"] = reg.label_smoothing
    args = args_class(**{**defaults, **training})
    plan = plan_strategy(model, recipe.strategy, learning_rate=args.learning_rate, distributed=args.world_size > 1)
    plan.decision = decision
    train_ds, eval_ds, collator = task.prepare(splits, processor, recipe.data, model)
    from hftl.preflight import check_first_step

    device = _preflight_device(model, args)
    check_first_step(model, train_ds, collator, recipe, device)
    terms = []
    if teacher is not None:
        from hftl.distill import Distillation, check_teacher

        terms.append(Distillation(teacher.to(device), recipe.distill.temperature, recipe.distill.alpha, order))
        check_teacher(terms[-1], train_ds, collator, len(splits.label_names), device)
        if recipe.distill.cache_teacher is True or (recipe.distill.cache_teacher == "auto" and not _inputs_vary(recipe, task)):
            terms[-1].cache_logits(train_ds, collator, args.per_device_eval_batch_size)
    forgetting = None
    if previous is not None:
        from hftl.continual import Ewc, Forgetting, old_rows
        from hftl.runs.load import prepare_eval

        if fisher is not None:
            terms.append(Ewc(model, fisher, recipe.continual.ewc.lambda_))
        old_eval, old_collate = prepare_eval(previous, old_rows(previous, recipe.continual.old_eval, "old_eval"),
                                             processor, model)
        forgetting = Forgetting(previous, old_eval, old_collate, eval_ds, collator, args.per_device_eval_batch_size)
    return Setup(recipe, task, splits, processor, model, args, plan, train_ds, eval_ds, collator,
                 cache=_feature_cache(recipe, task, model, plan, collator, args), loss_terms=terms, forgetting=forgetting)


def _joined(train, rows, key: str):
    """The training split plus `rows` (same columns, cast to the split's features)."""
    from datasets import concatenate_datasets

    missing = [c for c in train.column_names if c not in rows.column_names]
    if missing:
        raise HftlError(f"Recipe key '{key}': its rows lack the training data's column(s) {', '.join(missing)} (they "
                        f"have {', '.join(rows.column_names)}); give data in the recipe's format.")
    return concatenate_datasets([train, rows.select_columns(train.column_names).cast(train.features)])


def _old_fisher(recipe, previous, processor, model):
    """EWC's diagonal Fisher of the previous model on the old data (replay.data, else its training split)."""
    from hftl.continual import fisher, old_rows
    from hftl.runs.load import prepare_eval

    section = recipe.continual
    source = section.replay.data if section.replay is not None else None
    data, collate = prepare_eval(previous, old_rows(previous, source, "replay.data").shuffle(seed=recipe.seed),
                                 processor, model)
    return fisher(model, previous, data, collate, section.ewc.samples, source or "training split", recipe.seed)


def _check_push(recipe: Recipe, model) -> None:
    """What hub.push would upload must load for whoever downloads it; refused before training otherwise:
    with hub.strict, a base model known only by a local path; and a mean/cls-pooled adapter alone (PEFT's
    loaders put it on the base model's own pooler, so it would predict differently)."""
    from hftl.pooling import pooling_of

    if recipe.hub.push and recipe.hub.strict:
        from hftl.runs.hub import base_model_id

        if base_model_id(recipe) is None:
            raise HftlError(
                f"Recipe key 'hub.strict' is true but the base model '{recipe.model.model_name_or_path}' is a local "
                "folder with no Hub id: set hub.base_model to the Hub id it came from (or hub.strict: false to push "
                "with a warning).")
    pooling = pooling_of(model)
    if recipe.peft is None or pooling == "default" or not recipe.hub.push or recipe.hub.upload != "adapter":
        return
    raise HftlError(
        f"Recipe key 'hub.upload': 'adapter' alone would load wrong for others: the model trains on {pooling} "
        f"pooling (model.pooling: {recipe.model.pooling}), which PEFT's loaders do not restore (they put the adapter "
        "on the base model's own pooler). Set hub.upload: merged or both with peft.merge: true (the merged model "
        "carries the pooling; loading it needs trust_remote_code=True), or model.pooling: default.")


def _preflight_device(model, args):
    """Where the Trainer will put the model (so the pre-flight runs there): args.device, unless DeepSpeed or
    FSDP place it themselves -- then where it is now."""
    import os

    launched = any(os.environ.get(f"ACCELERATE_USE_{k}", "").lower() == "true" for k in ("DEEPSPEED", "FSDP"))
    if args.deepspeed or args.fsdp or launched:
        return next(model.parameters()).device
    model.to(args.device)
    return args.device


def _inputs_vary(recipe: Recipe, task) -> bool:
    """Does a training example reach the model differently each epoch (augmentation, mixup / cutmix)? Then
    nothing computed from the inputs once (backbone features, teacher logits) can be reused."""
    return task.augmenting(recipe.data) or recipe.regularization.mixing


def _feature_cache(recipe: Recipe, task, model, plan, collator, args):
    """A FeatureCache when strategy.cache_features allows and the run qualifies (see hftl/cache.py)."""
    from hftl.cache import FeatureCache, why_not

    mode = recipe.strategy.cache_features
    if mode is False:
        return None
    reason = why_not(model, plan, recipe.strategy, _inputs_vary(recipe, task))
    if reason is None and recipe.eval_tta:
        reason = "eval_tta evaluates the backbone on flipped images"
    if reason is None and recipe.distill is not None:
        reason = "distill runs the teacher on the real inputs"
    if reason is not None:
        if mode is True:
            raise HftlError(f"Recipe key 'strategy.cache_features' is true but {reason}.")
        return None
    return FeatureCache(model, collator, batch_size=args.per_device_eval_batch_size)


def plan(recipe: Recipe | str | dict, overrides: list[str] | None = None) -> str:
    """The plan table for a recipe (what `hftl plan` / `hftl train --dry-run` print)."""
    recipe = recipe if isinstance(recipe, Recipe) and not overrides else load_recipe(recipe, overrides)
    return setup(recipe).plan.table()


def train(recipe: Recipe | str | dict, overrides: list[str] | None = None, callbacks: list | None = None) -> TrainResult:
    """Run a recipe end to end and return the model, trainer, metrics and output dir.

    `callbacks`: extra `transformers.TrainerCallback`s (after hftl's own)."""
    recipe = recipe if isinstance(recipe, Recipe) and not overrides else load_recipe(recipe, overrides)
    if recipe.self_training is not None:
        from hftl.self_training import self_train

        return self_train(recipe, callbacks)
    return train_once(recipe, callbacks)


def train_once(recipe: Recipe, callbacks: list | None = None, extra_train=None) -> TrainResult:
    """One training run (`train` without its multi-round blocks); `extra_train`: rows added to the training split."""
    resume = _resume_path(recipe)
    _check_output_dir(recipe, resume is not None)
    out = recipe.output_dir
    created = not out.exists()
    try:
        s = setup(recipe, extra_train)
        if s.forgetting is not None:
            s.forgetting.measure("before", s.model)
        trainer = _make_trainer(s)
        stop = StopOnSignal()
        trainer.add_callback(stop)
        for cb in callbacks or []:
            trainer.add_callback(cb)
    except BaseException:
        # Never leave a half-written output dir behind for a run that did not start.
        if created and out.exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    from hftl.faults import Interrupted

    trainer.train(resume_from_checkpoint=resume)
    if stop.signum is not None:
        raise Interrupted(
            f"Training stopped by signal {stop.signum} at step {trainer.state.global_step}; checkpoint saved in "
            f"'{out}'. Resume with training.resume_from_checkpoint=true.", stop.signum)
    if trainer.ema is not None:  # the average is what the run evaluates and saves
        trainer.ema.copy_to_model()
    metrics = trainer.evaluate()
    # the per-class report's predictions, while cached features can still serve them (no second backbone pass)
    scored = _eval_scores(s, trainer) if trainer.is_world_process_zero() else None
    if s.cache is not None:  # the real backbone forward again: the returned/saved model is a normal one
        s.cache.restore()
        metrics["cached_features"] = True
    if s.forgetting is not None:
        s.forgetting.measure("after", trainer.accelerator.unwrap_model(trainer.model))
        metrics.update(s.forgetting.metrics())
    metrics = {k: v for k, v in metrics.items()}
    metrics["train_runtime"] = trainer.state.log_history[-2].get("train_runtime") if len(trainer.state.log_history) > 1 else None
    if trainer.is_world_process_zero():
        _write_outputs(s, trainer, metrics, scored)
    trainer.accelerator.wait_for_everyone()
    push_error = None
    if recipe.hub.push and trainer.is_world_process_zero():
        from hftl.runs.hub import push_output_dir

        try:
            push_output_dir(out, recipe.hub)
        except HftlError as e:
            # Training succeeded and its outputs are on disk: keep the result (model, metrics), report the push.
            logger.error("%s", e)
            push_error = str(e)
    return TrainResult(s.model, trainer, metrics, out, s.plan, s.splits.label_names, push_error)


def _make_trainer(s: Setup):
    from hftl.trainer import HftlTrainer

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
    cls = HftlTrainer if issubclass(HftlTrainer, base) else type(f"Hftl{base.__name__}", (HftlTrainer, base), {})
    reg = s.recipe.regularization
    mixer = None
    if reg.mixing:
        from hftl.mixing import BatchMixer

        mixer = BatchMixer(reg, len(s.splits.label_names))
    trainer = cls(
        model=s.model, args=s.args, train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=collator, processing_class=s.processor, compute_metrics=s.task.metrics_for(s.splits.label_names, s.processor),
        preprocess_logits_for_metrics=s.task.preprocess_logits_for_metrics,
        callbacks=s.plan.callbacks, plan=s.plan,
        on_nan_loss=s.recipe.on_nan_loss, task=s.task, batch_transform=mixer, eval_tta=s.recipe.eval_tta,
        loss_terms=s.loss_terms, unlabelled_rows=bool(s.recipe.distill is not None and s.recipe.distill.unlabeled))
    if s.recipe.ema is not None:
        from hftl.ema import WeightEma

        # after the Trainer placed the model on its device; the EMA copy lives there too
        trainer.ema = WeightEma(trainer.model, s.recipe.ema.decay, s.recipe.ema.update_after_step)
        trainer.add_callback(trainer.ema)
    return trainer


def _write_outputs(s: Setup, trainer, metrics: dict, scored=None) -> None:
    from hftl.runs import card, outputs
    from hftl.adapters import adapter_summary

    from hftl.pooling import make_portable

    out = s.recipe.output_dir
    trainer.save_model(str(out))  # adapter (+ head) for PEFT runs, the full model otherwise; safetensors
    if s.recipe.peft is None:
        make_portable(out, s.model)  # mean/cls pooling: config.json + the code plain transformers needs
    adapter = adapter_summary(s.model) if s.recipe.peft is not None else None
    table = s.plan.table()
    outputs.write_text(out / "recipe.yaml", _resolved(s.recipe, s.model).to_yaml())
    outputs.write_json(out / "metrics.json", metrics)
    outputs.write_text(out / "plan.md", table + "\n")
    if s.splits.label_names:
        outputs.write_json(out / "labels.json", s.splits.label_names)
    outputs.plot_curves(trainer.state.log_history, out / "curves.png", f"{s.recipe.task}: {s.recipe.model.model_name_or_path}",
                        s.task.metric_names)
    from hftl.pooling import pooling_of

    merged = s.recipe.peft is not None and s.recipe.peft.merge
    usage = card.usage_snippet(s.recipe, s.task, s.splits.label_names, pooling_of(s.model), adapter is not None, merged)
    from hftl.runs.hub import base_model_id

    text = card.model_card(
        s.recipe, s.task, metrics, table, s.task.describe_preprocessing(s.processor, s.recipe.data), s.splits.label_names,
        adapter, len(s.train_dataset), len(s.eval_dataset), usage, base_model_id(s.recipe), trainer.state.log_history,
        _evaluation_report(s, metrics, scored), _task_report(s, trainer))
    outputs.write_text(out / "README.md", text)
    if merged:
        # last, so that a failed merge still leaves a complete, loadable adapter run
        from hftl.runs.export import merge_adapter

        merge_adapter(s.model, s.processor, out / "merged")
    outputs.fix_modes(out)
    logger.info("outputs written to %s", out)


def _task_report(s: Setup, trainer) -> list[str]:
    """The task's own outputs after training (sampled completions) and the regularizers that ran, as card lines."""
    from hftl.runs.outputs import write_text

    model = trainer.accelerator.unwrap_model(trainer.model)
    lines, files = s.task.report(model, s.processor, s.recipe)
    for name, text in files.items():
        write_text(s.recipe.output_dir / name, text)
    if s.forgetting is not None:
        s.forgetting.plot(s.recipe.output_dir / "forgetting.png")
        lines += s.forgetting.card_lines(s.recipe.continual)
    return _regularizer_notes(s.recipe) + lines


def _regularizer_notes(recipe: Recipe) -> list[str]:
    reg, notes = recipe.regularization, []
    if recipe.distill is not None:
        d = recipe.distill
        start = f"; the student started as the teacher's blocks {d.student_from_teacher.layers}" if d.student_from_teacher else ""
        if d.unlabeled:
            start += f"; the unlabelled rows of `{d.unlabeled}` joined the training split, taught by the teacher alone"
        notes.append(f"- Knowledge distillation from `{d.teacher}`: loss = {d.alpha} x T^2 x KL(teacher || student) "
                     f"at T = {d.temperature} + {1 - d.alpha:g} x the task loss{start}.")
    if reg.mixing:
        notes.append(f"- Mixed training batches (timm Mixup): mixup alpha {reg.mixup}, cutmix alpha {reg.cutmix}, "
                     f"{reg.mix_prob:.0%} of batches, cutmix share {reg.switch_prob}; soft-target cross-entropy"
                     f"{f', label smoothing {reg.label_smoothing} in the targets' if reg.label_smoothing else ''}.")
    elif reg.label_smoothing:
        notes.append(f"- Label smoothing {reg.label_smoothing} (TrainingArguments.label_smoothing_factor).")
    if recipe.ema is not None:
        notes.append(f"- **Weights: the exponential moving average** (decay {recipe.ema.decay}, from step "
                     f"{recipe.ema.update_after_step + 1}) of the training weights, updated every optimizer step: "
                     "the evaluations above and the saved model use the average, not the last step's weights.")
    if recipe.eval_tta:
        notes.append(f"- Evaluation averages class probabilities over the image and its {' and '.join(recipe.eval_tta)} "
                     "(test-time augmentation); the saved model and `pipeline()` see each image once.")
    return ["", "## Regularization", "", *notes] if notes else []


def _eval_scores(s: Setup, trainer):
    """The trained model's predictions on the evaluation set, for eval/ and the card; None where the parameters
    are sharded across ranks (FSDP, ZeRO-3: this rank alone cannot run the model) or there are no labels. The
    Trainer's own evaluation set and collator: cached features where the run has them."""
    import os

    from hftl.recipe import _zero_stage
    from hftl.runs.evaluate import score_prepared, shown_inputs

    sharded = s.args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or _zero_stage(s.recipe.training) == 3
    if sharded or not s.splits.label_names:
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    shown = shown_inputs(s.splits.validation, s.task.input_column(s.recipe.data))
    scored = score_prepared(s.task, model.eval(), trainer.eval_dataset, trainer.data_collator, shown,
                            s.args.per_device_eval_batch_size)
    model.train(was_training)
    return scored


def _evaluation_report(s: Setup, metrics: dict, scored) -> dict | None:
    """eval/ (per-class table, confusion matrix, worst examples) from `_eval_scores`, for the card."""
    from hftl.runs.evaluate import write_report
    from hftl.runs.load import read_run

    if scored is None:
        return None
    run = read_run(s.recipe.output_dir)
    keys = [k for k in metrics if k.startswith("eval_")]
    return write_report(s.recipe.output_dir / "eval", run, scored, {k: metrics[k] for k in keys}, "validation split")


def _resolved(recipe: Recipe, model) -> Recipe:
    """The recipe as it ran: model.pooling 'auto' becomes the pooling it resolved to."""
    from hftl.pooling import pooling_of

    return recipe.model_copy(update={"model": recipe.model.model_copy(update={"pooling": pooling_of(model)})})
