"""Optimizer param groups by depth: discriminative learning rates (ULMFiT; BEiT/timm layer decay).

Every parameter that may ever train is in a group -- also the ones frozen now -- so that gradual
unfreezing needs no new optimizer (the Trainer would otherwise drop them: it only keeps
requires_grad=True). Frozen parameters keep `grad=None`, which torch optimizers skip entirely
(no weight decay, no moment updates). Building groups never touches `requires_grad`.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from hftl.hooks.freezing import matches
from hftl.hooks.layers import LayerMap


def depth_lrs(layer_map: LayerMap, base_lr: float, spec) -> list[float]:
    """The learning rate of every depth 0..head_depth for a `strategy.discriminative_lr` spec (or None)."""
    top = layer_map.head_depth
    if spec is None or spec.lr_groups is not None:
        return [base_lr] * (top + 1)
    head_lr = spec.head_lr if spec.head_lr is not None else base_lr
    if spec.layer_decay is not None:
        return [head_lr * spec.layer_decay ** (top - d) for d in range(top + 1)]
    if spec.backbone_lr is not None:
        # geometric interpolation from backbone_lr at depth 0 to head_lr at the head
        ratio = (head_lr / spec.backbone_lr) ** (1 / top)
        return [spec.backbone_lr * ratio**d for d in range(top + 1)]
    return [base_lr] * top + [head_lr]


def param_groups(
    model: nn.Module,
    layer_map: LayerMap,
    names: Iterable[str],
    base_lr: float,
    weight_decay: float,
    decay_names: set[str],
    spec=None,
) -> list[dict]:
    """Groups (one per depth x decay/no-decay, or per explicit lr_group) over the parameters `names`."""
    names = set(names)
    lrs = depth_lrs(layer_map, base_lr, spec)
    keyed: dict[tuple, dict] = {}
    for n, p in model.named_parameters():
        if n not in names:
            continue
        decay = n in decay_names
        if spec is not None and spec.lr_groups is not None:
            g = next((g for g in spec.lr_groups if matches(n, g.patterns)), None)
            key, lr, label = (g.name if g else "default", decay), (g.lr if g else base_lr), (g.name if g else "default")
        else:
            d = layer_map.depth[n]
            key, lr, label = (d, decay), lrs[d], layer_map.labels[d]
        group = keyed.setdefault(key, {"params": [], "param_names": [], "lr": lr,
                                       "weight_decay": weight_decay if decay else 0.0, "name": label})
        group["params"].append(p)
        group["param_names"].append(n)
    return [keyed[k] for k in sorted(keyed, key=lambda k: (str(type(k[0])), k))]
