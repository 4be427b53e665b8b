"""Freeze / unfreeze parameters by depth or name pattern, and keep BatchNorm statistics fixed.

The one place that touches `requires_grad`. Param groups (discriminative.py) never do.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable

from torch import nn

from hftl.hooks.layers import LayerMap, strip_wrappers

logger = logging.getLogger(__name__)

_REGEX_CHARS = set("^$()+\\|{")


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


def check_patterns(model: nn.Module, patterns: Iterable[str], key: str) -> None:
    """Every pattern must match at least one parameter: a silent no-op freeze is a bug."""
    from hftl.errors import HftlError

    names = [n for n, _ in model.named_parameters()]
    for p in patterns:
        if is_regex(p):
            try:
                re.compile(p)
            except re.error as e:
                raise HftlError(f"Recipe key '{key}': {p!r} is not a valid regex ({e}).") from None
        if not any(matches(n, [p]) for n in names):
            sample = sorted({".".join(strip_wrappers(n).split(".")[:3]) for n in names})[:12]
            raise HftlError(
                f"Recipe key '{key}': pattern {p!r} matches no parameter of the model. Patterns are globs "
                f"('*.layer.0.*'), module prefixes ('bert.embeddings') or regexes; names start with: {', '.join(sample)}."
            )


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def set_trainable(model: nn.Module, names: set[str]) -> None:
    """Exactly the parameters in `names` require grad."""
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def select(layer_map: LayerMap, names: Iterable[str], freeze, unfreeze: list[str]) -> set[str]:
    """The names (a subset of `names`) that stay trainable under a freeze spec.

    freeze: "none" | "backbone" | {"below_depth": k} | {"patterns": [...]} ; `unfreeze` patterns win.
    """
    names = set(names)
    if freeze in (None, "none"):
        frozen = set()
    elif freeze == "backbone":
        frozen = {n for n in names if layer_map.depth[n] != layer_map.head_depth}
    elif getattr(freeze, "below_depth", None) is not None:
        frozen = {n for n in names if layer_map.depth[n] < freeze.below_depth}
    else:
        frozen = {n for n in names if matches(n, freeze.patterns)}
    keep = {n for n in names if matches(n, unfreeze)} if unfreeze else set()
    return (names - frozen) | (keep & set(layer_map.depth))


def log_trainable(model: nn.Module, layer_map: LayerMap) -> None:
    counts: dict[int, list[int]] = {}
    for n, p in model.named_parameters():
        c = counts.setdefault(layer_map.depth[n], [0, 0])
        c[0] += p.numel()
        c[1] += p.numel() if p.requires_grad else 0
    for d in sorted(counts):
        logger.info("depth %d (%s): %d/%d parameters trainable", d, layer_map.labels[d], counts[d][1], counts[d][0])


# ------------------------------------------------------------------------------------------ BatchNorm

_BN_TYPES = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)


def batchnorm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # timm's BatchNormAct2d subclasses BatchNorm2d, so it is found too.
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BN_TYPES)]


def _keep_eval(module: nn.Module, args) -> None:
    # The Trainer calls model.train() inside training_step, after every callback: only a forward
    # pre-hook runs late enough to keep this layer in eval mode for the forward that follows.
    if module._hftl_freeze_stats:
        module.training = False


def frozen_subtrees(model: nn.Module, frozen: set[str]) -> list[nn.Module]:
    """The largest submodules whose parameters are all frozen (param-less modules such as a task-level
    dropout are left alone: they belong to whatever uses them)."""
    out = []

    def visit(module: nn.Module, prefix: str) -> None:
        names = [f"{prefix}{n}" for n, _ in module.named_parameters()]
        if names and all(n in frozen for n in names):
            out.append(module)
            return
        for cname, child in module.named_children():
            visit(child, f"{prefix}{cname}.")

    for cname, child in model.named_children():
        visit(child, f"{cname}.")
    return out


class FrozenEval:
    """Frozen submodules run in eval mode (no dropout, fixed BatchNorm statistics) in every forward,
    although the Trainer calls model.train() inside each training_step."""

    def __init__(self, model: nn.Module):
        self.modules: list[nn.Module] = []
        self._handle = model.register_forward_pre_hook(self._pre_forward)

    def _pre_forward(self, module, args):
        for m in self.modules:
            if m.training:
                m.eval()

    def update(self, model: nn.Module, frozen: set[str], enabled: bool = True) -> int:
        for m in self.modules:
            m.train(model.training)
        self.modules = frozen_subtrees(model, frozen) if enabled else []
        return len(self.modules)


class BatchNormFreezer:
    """Keeps chosen BatchNorm layers in eval mode (running mean/var fixed) however often .train() is called."""

    def __init__(self, model: nn.Module):
        self.modules = dict(batchnorm_modules(model))
        self._handles = []
        for m in self.modules.values():
            m._hftl_freeze_stats = False
            self._handles.append(m.register_forward_pre_hook(_keep_eval))

    def update(self, frozen: set[str], all_layers: bool) -> int:
        """Freeze the statistics of every BN whose own parameters are all in `frozen` (or of all BN)."""
        n_frozen = 0
        for name, m in self.modules.items():
            own = [f"{name}.{p}" for p, _ in m.named_parameters()]
            freeze = all_layers or (bool(own) and all(o in frozen for o in own))
            m._hftl_freeze_stats = freeze
            if freeze:
                m.training = False
                n_frozen += 1
        return n_frozen

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for m in self.modules.values():
            m._hftl_freeze_stats = False
