"""Parameter names: seeing through wrappers (DDP, torch.compile, PEFT) and matching user patterns against them."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from torch import nn

# Prefixes wrappers add to parameter names: DDP, torch.compile, PEFT (tuner models such as LoRA hold the
# model as `base_model.model.`, prompt-learning models such as prefix tuning as `base_model.`).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.", "base_model.")
_REGEX_CHARS = set("^$()+\\|{")


def strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def unwrap(model: nn.Module) -> nn.Module:
    """The task model inside DDP / compile / PEFT wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module) and type(model).__name__ in (
            "DistributedDataParallel", "DataParallel", "FullyShardedDataParallel"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
        else:
            return model


def under(name: str, prefix: str) -> bool:
    """`name` is the module path `prefix` or inside it."""
    return name == prefix or name.startswith(prefix + ".")


def is_regex(pattern: str) -> bool:
    """Globs are the default ('*.layer.0.*'); a pattern with ^ $ ( ) + \\ | { is a regex (searched)."""
    return bool(_REGEX_CHARS & set(pattern))


def matches(name: str, patterns: Iterable[str]) -> bool:
    """A pattern is a regex (searched) if it looks like one, else a glob on the full name, else a module prefix."""
    inner = strip_wrappers(name)
    for p in patterns:
        if is_regex(p):
            if re.search(p, name) or re.search(p, inner):
                return True
        elif any(fnmatch.fnmatchcase(n, p) or n == p or n.startswith(p + ".") for n in (name, inner)):
            return True
    return False


def check_patterns(model: nn.Module, patterns: Iterable[str]) -> None:
    """Every pattern must match at least one parameter: a silent no-op freeze is a bug. Raises ValueError."""
    names = [n for n, _ in model.named_parameters()]
    for p in patterns:
        if is_regex(p):
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"{p!r} is not a valid regex ({e}).") from None
        if not any(matches(n, [p]) for n in names):
            sample = sorted({".".join(strip_wrappers(n).split(".")[:3]) for n in names})[:12]
            raise ValueError(
                f"pattern {p!r} matches no parameter of the model. Patterns are globs ('*.layer.0.*'), module "
                f"prefixes ('bert.embeddings') or regexes; names start with: {', '.join(sample)}.")
