"""Freeze / unfreeze parameters by depth or name pattern, and keep BatchNorm statistics fixed.

The one place that touches `requires_grad`. Param groups (discriminative.py) never do.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from hftl.hooks.layers import LayerMap
from hftl.hooks.names import matches


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
