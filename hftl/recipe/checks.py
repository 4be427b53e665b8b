"""Rules across sections, checked once every section is valid: keys only some tasks read, PEFT against its config
classes, sharding, the optional blocks' combinations, preset auto, and TrainingArguments' own verdict."""

from __future__ import annotations

import os

from hftl.recipe.peft import check_peft_section
from hftl.recipe.schema import Recipe
from hftl.recipe.training import check_training_values, sharded, uses_fsdp, zero_stage
from hftl.tasks import get_task

AUTO_TASKS = ("text-classification", "image-classification", "audio-classification")  # what preset auto serves
# the tasks whose inputs data.augment changes
AUGMENT_TASKS = ("image-classification", "zero-shot-image-classification")


def cross_checks(recipe: Recipe) -> list[str]:
    """Checks that need several sections or other libraries (PEFT config classes, TrainingArguments)."""
    problems = _task_keys(recipe)
    if recipe.peft is not None:
        problems += check_peft_section(recipe.peft, get_task(recipe.task))
        if recipe.hub.push and recipe.hub.upload in ("merged", "both") and not recipe.peft.merge:
            problems.append(f"Recipe key 'hub.upload' is '{recipe.hub.upload}' but peft.merge is false: the merged "
                            "model is only written with peft.merge: true.")
    gen = recipe.generation
    if gen is not None and gen.images is not None and len(gen.images) != len(gen.prompts):
        problems.append(f"Recipe key 'generation.images' lists {len(gen.images)} image(s) for {len(gen.prompts)} "
                        "prompt(s) in generation.prompts: give one image per prompt.")
    problems += _check_sharding(recipe)
    problems += _check_blocks(recipe)
    problems += _check_auto(recipe)
    if not problems:
        problems += check_training_values(recipe.training)
    return problems


def _names(tasks: list[str]) -> str:
    return tasks[0] if len(tasks) == 1 else f"{', '.join(tasks[:-1])} and {tasks[-1]}"


def _task_keys(recipe: Recipe) -> list[str]:
    """A key that only some task families read (its schema field says which) is refused for the others,
    instead of being silently ignored."""
    problems = []
    for key, field in Recipe.model_fields.items():
        tasks = (field.json_schema_extra or {}).get("tasks")
        if tasks and recipe.task not in tasks and getattr(recipe, key) not in (None, []):
            problems.append(f"Recipe key '{key}' is read by task {_names(tasks)} only; this recipe's task is "
                            f"{recipe.task}: remove the key or change the task.")
    for section_name in ("model", "data", "regularization", "generation"):
        section = getattr(recipe, section_name)
        if section is None:
            continue
        for key in sorted(section.model_fields_set):
            field = type(section).model_fields[key]
            tasks = (field.json_schema_extra or {}).get("tasks")
            default = field.get_default(call_default_factory=True)
            if tasks and recipe.task not in tasks and getattr(section, key) != default:  # saved recipes list defaults
                problems.append(f"Recipe key '{section_name}.{key}' is read by task {_names(tasks)} only; this "
                                f"recipe's task is {recipe.task}: remove the key or change the task.")
    return problems + _augment_keys(recipe)


def _augment_keys(recipe: Recipe) -> list[str]:
    """data.augment switches image transforms on; on a task without them a key that turns one on is refused
    (`augment: false`, which asks for none, is accepted everywhere)."""
    if recipe.task in AUGMENT_TASKS:
        return []
    aug = recipe.data.augment
    fields = type(aug).model_fields  # saved recipes list the defaults: only a key set to something else counts
    on = sorted(k for k in aug.model_fields_set if getattr(aug, k) not in (None, False, 0, 0.0)
                and getattr(aug, k) != fields[k].get_default())
    if not on:
        return []
    return [f"Recipe key 'data.augment.{on[0]}' ({getattr(aug, on[0])!r}) is an image augmentation, read by task "
            f"{_names(list(AUGMENT_TASKS))} only; this recipe's task is {recipe.task}: remove the key (or set "
            "data.augment: false)."]


def _check_auto(recipe: Recipe) -> list[str]:
    if recipe.strategy.preset != "auto":
        return []
    if recipe.task not in AUTO_TASKS:
        return [f"Recipe key 'strategy.preset' is auto, which chooses among classification strategies from a linear "
                f"probe of the frozen features; task {recipe.task} is not one ({', '.join(AUTO_TASKS)}): give the strategy "
                "explicitly (preset: feature_extraction | partial | full, or freeze / peft)."]
    if recipe.peft is not None:
        return ["Recipe key 'strategy.preset' is auto but a peft: section is given: the adapter already decides what "
                "trains. Remove peft: to let auto choose, or drop preset: auto."]
    return []


def _check_blocks(recipe: Recipe) -> list[str]:
    """The optional training blocks against each other and the rest of the recipe."""
    problems = []
    if recipe.continual is not None and recipe.continual.ewc is not None and recipe.peft is not None:
        problems.append("Recipe key 'continual.ewc' keeps the previous run's weights close to where they were; with "
                        "peft those weights are frozen and only a new adapter trains. Use continual.replay, or drop "
                        "peft.")
    if recipe.distill is not None and recipe.distill.unlabeled and recipe.regularization.mixing:
        problems.append("Recipe key 'distill.unlabeled' adds rows without labels, which mixup / cutmix cannot mix "
                        "(they mix one-hot labels): drop regularization.mixup / cutmix or distill.unlabeled.")
    if recipe.distill is not None and recipe.distill.unlabeled and recipe.distill.alpha == 0:
        problems.append("Recipe key 'distill.unlabeled' teaches through the distillation term alone, which "
                        "distill.alpha: 0 switches off: raise alpha, or drop unlabeled.")
    if recipe.distill is not None and recipe.distill.cache_teacher is True:
        if get_task(recipe.task).augmenting(recipe.data) or recipe.regularization.mixing:
            problems.append("Recipe key 'distill.cache_teacher' is true but the training inputs change every epoch "
                            "(data.augment or mixup / cutmix): cached teacher logits would be for other inputs. Set it "
                            "to auto or false, or turn the augmentation off.")
    smoothing = recipe.training.get("label_smoothing_factor")
    if recipe.regularization.label_smoothing and smoothing not in (None, 0, 0.0):
        problems.append(f"Recipe keys 'regularization.label_smoothing' ({recipe.regularization.label_smoothing}) and "
                        f"'training.label_smoothing_factor' ({smoothing}) say the same thing: give one of them.")
    problems += _check_fewshot(recipe)
    if recipe.ema is not None and sharded(recipe.training):
        problems.append("Recipe key 'ema' needs every weight on every rank; FSDP and ZeRO-3 shard them: use DDP "
                        "(or ZeRO-1/2), or remove ema.")
    return problems


def _check_fewshot(recipe: Recipe) -> list[str]:
    """contrastive body tuning and the L-BFGS head against the strategy."""
    s, problems = recipe.strategy, []
    if recipe.contrastive is not None and s.freeze == "backbone" and recipe.peft is None:
        problems.append("Recipe key 'contrastive' tunes the backbone parameters the strategy trains, and "
                        "strategy.freeze: backbone (preset feature_extraction) leaves none. For SetFit's two stages "
                        "(tuned body, then a head on it) use freeze: none with strategy.head_fit: lbfgs.")
    if s.head_fit == "lbfgs" and recipe.task not in AUTO_TASKS:
        problems.append(f"Recipe key 'strategy.head_fit' is lbfgs, which fits a classifier's head on class ids; "
                        f"task {recipe.task} is not one of {', '.join(AUTO_TASKS)}: use head_fit: trainer.")
    if s.head_fit == "lbfgs" and s.gradual_unfreezing is not None:
        problems.append("Recipe key 'strategy.head_fit' is lbfgs, which fits the head alone in place of the "
                        "Trainer's epochs, so strategy.gradual_unfreezing would never unfreeze anything: drop one.")
    if s.head_fit == "lbfgs" and (recipe.ema is not None or recipe.distill is not None):
        problems.append(f"Recipe key 'strategy.head_fit' is lbfgs, which fits the head on its labels alone in place "
                        f"of the Trainer's steps; {'ema averages' if recipe.ema else 'distill adds a teacher term to'} "
                        "those steps: use head_fit: trainer, or drop the block.")
    if s.head_fit == "lbfgs" and recipe.regularization.mixing:
        problems.append("Recipe key 'strategy.head_fit' is lbfgs, which fits the head on fixed features; mixup / "
                        "cutmix mix training batches the Trainer would draw: drop one.")
    return problems


def _check_sharding(recipe: Recipe) -> list[str]:
    """Combinations that cannot train correctly under parameter sharding are refused up front."""
    s = recipe.strategy
    problems = []
    if zero_stage(recipe.training) == 3 and s.gradual_unfreezing is not None:
        problems.append(
            "strategy.gradual_unfreezing cannot run under DeepSpeed ZeRO-3: parameters are sharded and their "
            "requires_grad is fixed when the engine is built, so layers unfrozen later would silently not train. "
            "Use ZeRO-2, DDP or FSDP (accelerate_configs/), or drop gradual_unfreezing.")
    fsdp = uses_fsdp(recipe.training)
    orig = (recipe.training.get("fsdp_config") or {}).get("use_orig_params",
                                                          os.environ.get("FSDP_USE_ORIG_PARAMS", "true"))
    freezes = s.freeze not in (None, "none") or s.preset in ("partial", "feature_extraction") or s.gradual_unfreezing
    if fsdp and str(orig).lower() == "false" and (freezes or recipe.peft is not None):
        problems.append(
            "FSDP with use_orig_params: false cannot mix frozen and trainable parameters in one unit; set "
            "use_orig_params: true (accelerate_configs/fsdp.yaml does).")
    return problems
