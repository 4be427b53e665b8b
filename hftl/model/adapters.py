"""Recipe `peft:` -> a PEFT config and model. hftl does not implement adapters: PEFT does.

What hftl adds: `target_modules` found by inspecting the model when not given (transformers 5 renamed
many attention projections, e.g. ViT's query/value are now q_proj/v_proj), and the new task head
always in `modules_to_save` (so it trains and is saved with the adapter: peft#1070, peft#2099).
The checks that need no model (method names, keys, values) are in hftl/recipe/peft.py.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from hftl.errors import HftlError
from hftl.recipe.peft import config_class, config_kwargs, is_prompt_learning, peft_type

# Attention projections to adapt by default, most specific first (q/v as in the LoRA paper).
_QV_NAMES = [("q_proj", "v_proj"), ("query", "value"), ("q_lin", "v_lin"), ("q", "v"), ("qkv",), ("c_attn",),
             ("query_key_value",), ("Wqkv",)]


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


def build_peft_model(model: nn.Module, section, task_type: str | None, head: list[str], save: list[str] | None = None,
                     targets: str | list[str] | None = None):
    """Wrap `model` with the adapter the recipe asks for. `save` (default: the head) trains and saves with it:
    the new task head, or a language model's grown embeddings (kept tied to its head where they are tied).
    `targets`: the task's default target_modules (default: the attention query/value projections found)."""
    import peft

    ptype = peft_type(section.method)
    kwargs = config_kwargs(section, ptype)
    fields = {f.name for f in dataclasses.fields(config_class(ptype))}
    if "target_modules" in fields and not kwargs.get("target_modules") and not is_prompt_learning(ptype):
        kwargs["target_modules"] = targets or default_targets(model, head)
    save = head if save is None else save
    if "modules_to_save" in fields and (save or kwargs.get("modules_to_save")):
        kwargs["modules_to_save"] = sorted(set(kwargs.get("modules_to_save") or []) | set(save))
        if _tied_embeddings(model) and "ensure_weight_tying" in fields:
            kwargs.setdefault("ensure_weight_tying", True)  # the trained embedding copy is the head's too
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


def _tied_embeddings(model) -> bool:
    """The output embeddings (LM head) are the input embeddings' parameter; False for models without either
    (vision models raise NotImplementedError for get_input_embeddings)."""
    try:
        out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    return out is not None and inp is not None and getattr(out, "weight", None) is getattr(inp, "weight", 0)
