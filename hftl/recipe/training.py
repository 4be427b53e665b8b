"""`training:`: transformers.TrainingArguments, verbatim, with hftl's defaults for a transfer run, and the checks
TrainingArguments itself does not do before the model loads (unknown keys, types, report_to). Also the one place
that says whether a run's parameters are sharded (FSDP, DeepSpeed ZeRO-3)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import typing
from contextlib import contextmanager
from pathlib import Path

from hftl.errors import did_you_mean, unknown_key
from hftl.recipe.base import YAML11_BOOLS


def training_fields() -> dict[str, dataclasses.Field]:
    """TrainingArguments' init fields by name: the keys `training:` takes."""
    from transformers import TrainingArguments

    return {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}




def _bool_words(training: dict) -> dict:
    """`fp16: yes` -> True for the TrainingArguments fields that take only a boolean; `eval_strategy: no` stays 'no'."""
    out = {}
    for key, value in training.items():
        allowed = _allowed_types(key)
        if isinstance(value, str) and value in YAML11_BOOLS and bool in allowed and str not in allowed:
            value = YAML11_BOOLS[value]
        out[key] = value
    return out


def default_training(data: dict, name: str) -> dict:
    """hftl's defaults for a transfer run; anything the recipe sets wins."""
    import torch

    training = _bool_words(data)
    training.setdefault("output_dir", str(Path("outputs") / name))
    training.setdefault("eval_strategy", "epoch")
    training.setdefault("save_strategy", training["eval_strategy"] if training["eval_strategy"] in ("steps", "epoch") else "epoch")
    training.setdefault("logging_strategy", "steps")
    training.setdefault("logging_steps", 10)
    training.setdefault("save_total_limit", 2)
    training.setdefault("report_to", "none")
    # Image transforms run in set_transform and need the raw columns.
    training.setdefault("remove_unused_columns", False)
    # Classification losses are per-example means: averaging "tokens" across ranks would multiply the
    # loss (and gradients) by world_size under DDP (transformers 5.x default).
    training.setdefault("average_tokens_across_devices", False)
    # On a CPU-only machine the Trainer joins a multi-process (gloo) group only with use_cpu=True.
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    if not has_accelerator:
        training.setdefault("use_cpu", True)
    return training


def check_training_keys(training: dict, problems: list[str]) -> None:
    fields = training_fields()
    for key in training:
        if key not in fields and key != "overwrite_output_dir":  # that one gets its own message below
            problems.append(unknown_key(key, "training", fields) + " (training: takes transformers.TrainingArguments names.)")
    if "overwrite_output_dir" in training and "overwrite_output_dir" not in fields:
        problems.append("training.overwrite_output_dir does not exist in transformers 5.x: use the top-level key overwrite_output_dir: true.")


def zero_stage(training: dict) -> int | None:
    """ZeRO stage from training.deepspeed (dict or json path) or from `accelerate launch` with a DeepSpeed config."""
    ds = training.get("deepspeed")
    if isinstance(ds, str) and Path(ds).is_file():
        try:
            ds = json.loads(Path(ds).read_text())
        except ValueError:
            ds = None
    if isinstance(ds, dict):
        stage = (ds.get("zero_optimization") or {}).get("stage")
        return int(stage) if stage is not None else None
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return int(stage) if stage and stage.isdigit() else None
    return None


def trains(training: dict) -> bool:
    """Whether the run takes optimizer steps: `num_train_epochs: 0` (without max_steps) scores the model as it is,
    a complete run dir for the zero-shot or base-model baseline."""
    return not (training.get("num_train_epochs") == 0 and (training.get("max_steps") or -1) <= 0)


def uses_fsdp(training: dict) -> bool:
    """FSDP from training.fsdp or from `accelerate launch` with an FSDP config."""
    return bool(training.get("fsdp")) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def sharded(training: dict) -> bool:
    """Parameters are split across ranks (FSDP, DeepSpeed ZeRO-3): no rank holds the whole model, so nothing may
    run it alone (the evaluation report, EMA's copy)."""
    return uses_fsdp(training) or zero_stage(training) == 3


def engine_places_model(training: dict) -> bool:
    """DeepSpeed (any stage) or FSDP puts the model on its devices itself; otherwise the Trainer moves it to
    args.device."""
    deepspeed = bool(training.get("deepspeed")) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    return deepspeed or uses_fsdp(training)


@contextmanager
def _accelerate_state_kept():
    """TrainingArguments() resets Accelerate's shared state (transformers' training_args.py). A recipe validated
    while a Trainer lives (hftl reads a finished run's recipe.yaml back for its evaluation report) would leave that
    Trainer unable to evaluate or predict: keep the state as it was."""
    from accelerate.state import AcceleratorState, PartialState

    saved = [(cls, dict(cls._shared_state)) for cls in (PartialState, AcceleratorState)]
    try:
        yield
    finally:
        for cls, state in saved:
            cls._shared_state.clear()
            cls._shared_state.update(state)


def check_training_values(training: dict) -> list[str]:
    """Let TrainingArguments itself judge the values (types, choices, combinations)."""
    from transformers import TrainingArguments

    fields = training_fields()
    problems = []
    for key, value in training.items():
        field = fields.get(key)
        if field is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in _NON_NEGATIVE and value < 0:
            problems.append(f"Recipe key 'training.{key}' must be >= 0 (got {value!r}).")
        if key in _POSITIVE and isinstance(value, (int, float)) and value <= 0:
            problems.append(f"Recipe key 'training.{key}' must be > 0 (got {value!r}).")
        wrong_type = _type_problem(key, value)
        if wrong_type:
            problems.append(wrong_type)
    if problems:
        return problems
    try:
        with _accelerate_state_kept():
            args = TrainingArguments(**training)
        problems += _check_report_to(args.report_to)
    except ImportError as e:  # e.g. training.deepspeed without the deepspeed package
        problems.append(f"Recipe section 'training' needs a package that is not installed: {e}")
    except (ValueError, TypeError, KeyError) as e:
        msg = str(e).strip().replace("\n", " ")
        # Name the key: TrainingArguments' messages quote the bad value or the key, rarely both.
        named = [k for k, v in training.items()
                 if re.search(rf"\b{re.escape(k)}\b", msg) or (isinstance(v, str) and f"{v} is not a valid" in msg)]
        keys = ", ".join(f"'training.{k}'" for k in named)
        where = f"Recipe key{'s' if len(named) > 1 else ''} {keys}" if named else "Recipe section 'training'"
        problems.append(f"{where} {'are' if len(named) > 1 else 'is'} rejected by TrainingArguments: {msg}")
    return problems


def _check_report_to(report_to: list[str] | None) -> list[str]:
    """An integration that is not installed would only fail when the Trainer is built, after the model loaded."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    available = get_available_reporting_integrations()
    problems = []
    for name in report_to or []:
        if name not in INTEGRATION_TO_CALLBACK:
            problems.append(f"Recipe key 'training.report_to': unknown integration {name!r}.{did_you_mean(name, INTEGRATION_TO_CALLBACK)} "
                            f"Known: none, all, {', '.join(INTEGRATION_TO_CALLBACK)}.")
        elif name not in available:
            problems.append(f"Recipe key 'training.report_to': {name!r} is not installed (installed: "
                            f"{', '.join(available) or 'none of them'}); install it or set report_to: none.")
    return problems


@functools.cache
def _training_hints() -> dict:
    from transformers import TrainingArguments

    try:
        return typing.get_type_hints(TrainingArguments)
    except Exception:  # an annotation that does not resolve in this transformers version: skip type checks
        return {}


def _allowed_types(key: str) -> tuple:
    """The types TrainingArguments' annotation of `key` admits (X | None -> (X, NoneType)); (None,) if unknown."""
    hint = _training_hints().get(key)
    return typing.get_args(hint) or (hint,)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _type_problem(key: str, value) -> str | None:
    """TrainingArguments does not check types: a string for num_train_epochs would only fail mid-training."""
    allowed = _allowed_types(key)
    if not allowed or not all(t in _TYPE_NAMES for t in allowed):
        return None  # enums, lists, dicts: TrainingArguments checks those itself
    # A string field takes any scalar (resume_from_checkpoint: true is hftl's "the last checkpoint").
    ok = (isinstance(value, bool) and bool in allowed) or (str in allowed and isinstance(value, (str, int, float))) or (
        not isinstance(value, bool) and (type(value) in allowed or (type(value) is int and float in allowed)))
    if ok:
        return None
    names = " or ".join(_TYPE_NAMES[t] for t in allowed)
    return f"Recipe key 'training.{key}' must be {names} (got {value!r})."


_POSITIVE = {"learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
             "gradient_accumulation_steps", "logging_steps", "eval_steps", "save_steps"}
_NON_NEGATIVE = {"num_train_epochs", "weight_decay", "warmup_steps", "warmup_ratio", "max_grad_norm", "save_total_limit",
                 "dataloader_num_workers", "label_smoothing_factor"}
