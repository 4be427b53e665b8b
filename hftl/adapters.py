"""Recipe `peft:` -> a PEFT config and model. hftl does not implement adapters: PEFT does.

What hftl adds: method names users type (`dora` = LoRA with use_dora), keys checked against the PEFT
config class, `target_modules` found by inspecting the model when not given (transformers 5 renamed
many attention projections, e.g. ViT's query/value are now q_proj/v_proj), and the new task head
always in `modules_to_save` (so it trains and is saved with the adapter: peft#1070, peft#2099).
Recipe-time checks: unknown keys, values the PEFT config class rejects, prompt-learning methods
(prefix/prompt tuning) only on text and never with `merge: true` (they learn virtual tokens, no weights).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from hftl.errors import HftlError, did_you_mean

_ALIASES = {"dora": "LORA", "prefix_tuning": "PREFIX_TUNING", "prompt_tuning": "PROMPT_TUNING"}
# hftl fills these itself; a recipe may still set target_modules / modules_to_save.
_MANAGED = {"task_type", "peft_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
            "peft_version"}
# Attention projections to adapt by default, most specific first (q/v as in the LoRA paper).
_QV_NAMES = [("q_proj", "v_proj"), ("query", "value"), ("q_lin", "v_lin"), ("q", "v"), ("qkv",), ("c_attn",),
             ("query_key_value",), ("Wqkv",)]


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


def check_peft_section(section, task: str) -> list[str]:
    """Problems with the `peft:` section, found before any weights load."""
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
        if task != "text-classification":
            problems.append(f"Recipe key 'peft.method': {section.method} works on token inputs; use it with task "
                            "text-classification, or pick lora/dora/ia3/loha/lokr for images.")
        if section.merge:
            problems.append(f"Recipe key 'peft.merge': {section.method} learns virtual tokens, not weight updates, so "
                            "there is nothing to merge into the model; set merge: false (or use lora/dora/ia3/loha/lokr).")
    return problems


def _leaf_names(model: nn.Module, keep) -> list[str]:
    """The last name part of every module `keep(module)` accepts, sorted and once each."""
    return sorted({n.split(".")[-1] for n, m in model.named_modules() if keep(m)})


def linear_names(model: nn.Module) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    return _leaf_names(model, lambda m: isinstance(m, (nn.Linear, Conv1D)))


def layer_hint(model: nn.Module) -> str:
    """The layer names target_modules can use: linear layers, and the non-grouped convolutions of conv nets."""
    hint = f"its linear layers: {', '.join(linear_names(model)) or 'none'}"
    convs = _leaf_names(model, lambda m: isinstance(m, nn.Conv2d) and m.groups == 1)
    return hint + (f"; its convolutions (LoRA adapts Conv2d too): {', '.join(convs)}" if convs else "")


def default_targets(model: nn.Module, head: list[str]) -> list[str]:
    """The attention query/value projections, by inspecting the model's linear layers."""
    from transformers.pytorch_utils import Conv1D

    leaves = {n.split(".")[-1] for n, m in model.named_modules()
              if isinstance(m, (nn.Linear, Conv1D)) and not any(n == h or n.startswith(h + ".") for h in head)}
    for names in _QV_NAMES:
        if all(n in leaves for n in names):
            return list(names)
    raise HftlError("Cannot find attention query/value projections to adapt; set peft.target_modules to some of "
                    f"the model's layers ({layer_hint(model)}).")


def _config_kwargs(section, ptype: str) -> dict:
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
        config_class(ptype)(**_config_kwargs(section, ptype))
    except (ValueError, TypeError) as e:
        return f"Recipe section 'peft' ({section.method}) is rejected by PEFT: {str(e).strip()}".replace("\n", " ")
    return None


def build_peft_model(model: nn.Module, section, task_type: str | None, head: list[str]):
    """Wrap `model` with the adapter the recipe asks for. The task head trains and saves with it."""
    import peft

    ptype = peft_type(section.method)
    kwargs = _config_kwargs(section, ptype)
    fields = {f.name for f in dataclasses.fields(config_class(ptype))}
    if "target_modules" in fields and not kwargs.get("target_modules") and not is_prompt_learning(ptype):
        kwargs["target_modules"] = default_targets(model, head)
    if "modules_to_save" in fields:
        kwargs["modules_to_save"] = sorted(set(kwargs.get("modules_to_save") or []) | set(head))
    if task_type is not None:
        kwargs["task_type"] = task_type
    try:
        config = config_class(ptype)(**kwargs)
    except (ValueError, TypeError) as e:
        raise HftlError(f"Recipe section 'peft' ({section.method}) is rejected by PEFT: {e}".replace("\n", " ")) from None
    try:
        return peft.get_peft_model(model, config)
    except (ValueError, TypeError) as e:
        msg = str(e).replace("\n", " ")
        # The two messages PEFT raises when target_modules selects no layer (peft/tuners/tuners_utils.py).
        if "not found in the base model" in msg or "No modules were targeted" in msg:
            raise HftlError(f"Recipe key 'peft.target_modules' {kwargs.get('target_modules')!r} matches no layer of "
                            f"{type(model).__name__}. Names to use in target_modules: {layer_hint(model)}.") from None
        keys = [k for k in section.options() if f"`{k}`" in msg]
        where = f"Recipe key 'peft.{keys[0]}'" if len(keys) == 1 else "Recipe section 'peft'"
        raise HftlError(f"{where} ({section.method}) is rejected by PEFT: {msg}") from None


def adapter_summary(model) -> dict:
    """Method, rank/alpha/targets and trainable counts, for the model card."""
    cfg = next(iter(model.peft_config.values()))
    # PEFT's own count (the same numbers print_trainable_parameters shows).
    trainable, total = model.get_nb_trainable_parameters()
    keys = ("r", "lora_alpha", "lora_dropout", "use_dora", "target_modules", "feedforward_modules",
            "modules_to_save", "num_virtual_tokens", "alpha")
    out = {"method": str(cfg.peft_type.value if hasattr(cfg.peft_type, "value") else cfg.peft_type).lower()}
    for k in keys:
        v = getattr(cfg, k, None)
        if v not in (None, [], set()):
            # PEFT appends its own SEQ_CLS head names to modules_to_save, so names can repeat.
            out[k] = sorted(set(v)) if isinstance(v, (set, list, tuple)) else v
    out["trainable_params"] = trainable
    out["total_params"] = total
    out["trainable_percent"] = round(100 * trainable / max(total, 1), 4)
    return out
