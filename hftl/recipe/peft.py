"""`peft:` and its checks against PEFT's config classes, with no model: method names users type (`dora` = LoRA
with use_dora), keys checked against the config class, values judged by the class itself, and what needs token
inputs (prefix/prompt tuning) or cannot merge. Used by recipe validation and by hftl.model.adapters, which
builds the PEFT model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hftl.errors import HftlError, did_you_mean
from hftl.tasks import get_task, task_names


class PeftSection(BaseModel):
    """`method` plus the PEFT config class's own keys (checked against that class when the recipe loads)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    method: str = Field(description="lora, dora, ia3, loha, lokr, prefix_tuning, prompt_tuning or any PeftType.")
    merge: bool = Field(False, description="Also write the base model with the adapter merged in (merged/).")

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


_ALIASES = {"dora": "LORA", "prefix_tuning": "PREFIX_TUNING", "prompt_tuning": "PROMPT_TUNING"}
# hftl fills these itself; a recipe may still set target_modules / modules_to_save.
_MANAGED = {"task_type", "peft_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
            "peft_version"}


def peft_type(method: str) -> str:
    from peft import PeftType

    name = _ALIASES.get(method.lower(), method.upper())
    allowed = sorted({m.lower() for m in PeftType.__members__} | set(_ALIASES))
    if name not in PeftType.__members__:
        raise HftlError(f"Recipe key 'peft.method': unknown method {method!r}; allowed: {', '.join(allowed)}."
                        f"{did_you_mean(method.lower(), allowed)}")
    return name


def config_class(ptype: str):
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return PEFT_TYPE_TO_CONFIG_MAPPING[ptype]


def is_prompt_learning(ptype: str) -> bool:
    """Prefix/prompt tuning and kin: virtual tokens in front of the input, no weights to target or merge."""
    from peft import PromptLearningConfig

    return issubclass(config_class(ptype), PromptLearningConfig)


def check_peft_section(section, task) -> list[str]:
    """Problems with the `peft:` section, found before any weights load. `task`: the recipe's Task."""
    try:
        ptype = peft_type(section.method)
    except HftlError as e:
        return [str(e)]
    fields = {f.name for f in dataclasses.fields(config_class(ptype)) if f.init} - _MANAGED
    problems = []
    for key in section.options():
        if key not in fields:
            problems.append(f"Unknown recipe key 'peft.{key}' for method {section.method}.{did_you_mean(key, fields)} "
                            f"Allowed keys: {', '.join(sorted(fields))}.")
    if not problems:
        problem = check_peft_values(section, ptype)
        if problem:
            problems.append(problem)
    if is_prompt_learning(ptype):
        if not task.prompt_learning:
            takes = [n for n in task_names() if get_task(n).prompt_learning]
            problems.append(f"Recipe key 'peft.method': {section.method} (virtual tokens) does not work with task "
                            f"{task.name}; use it with task {' or '.join(takes)}, or pick lora/dora/ia3/loha/lokr.")
        if section.merge:
            problems.append(f"Recipe key 'peft.merge': {section.method} learns virtual tokens, not weight updates, so "
                            "there is nothing to merge into the model; set merge: false (or use lora/dora/ia3/loha/lokr).")
    return problems


def config_kwargs(section, ptype: str) -> dict:
    """The recipe's PEFT keys plus what the method name implies (the parts that need no model)."""
    kwargs = dict(section.options())
    if section.method.lower() == "dora":
        kwargs["use_dora"] = True
    if is_prompt_learning(ptype):
        kwargs.setdefault("num_virtual_tokens", 10)
    elif ptype == "IA3" and "feedforward_modules" not in kwargs:
        # PEFT fills feedforward_modules from a per-architecture table that is missing many models (ViT) and
        # refers to modules hftl may not target: with none given, every target scales its output.
        kwargs["feedforward_modules"] = []
    return kwargs


def check_peft_values(section, ptype: str) -> str | None:
    """Let the PEFT config class judge the values and their combinations before any weights load
    (e.g. layers_to_transform with a regex target_modules, init_lora_weights: loftq without loftq_config)."""
    try:
        config_class(ptype)(**config_kwargs(section, ptype))
    except (ValueError, TypeError) as e:
        return f"Recipe section 'peft' ({section.method}) is rejected by PEFT: {str(e).strip()}".replace("\n", " ")
    return None
