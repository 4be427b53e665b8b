"""Discriminative learning rates (ULMFiT; BEiT/timm layer decay) and the optimizer groups built from them.

`assign_lrs` resolves every parameter's (group, learning rate) once; the optimizer (`param_groups`) and
the plan table both read that assignment, so they cannot disagree.

Every parameter that may ever train is in a group -- also the ones frozen now -- so that gradual
unfreezing needs no new optimizer (the Trainer would otherwise drop them: it only keeps
requires_grad=True). Frozen parameters keep `grad=None`, which torch optimizers skip entirely
(no weight decay, no moment updates). Building groups never touches `requires_grad`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from hftl.hooks.layers import LayerMap
from hftl.hooks.names import matches


@dataclass(frozen=True)
class LrAssignment:
    group: str  # the depth's label, or the lr_groups entry's name ("default" for the rest)
    lr: float


def depth_lrs(layer_map: LayerMap, base_lr: float, spec) -> list[float]:
    """The learning rate of every depth 0..head_depth for a depth-based spec (layer_decay, head_lr, backbone_lr).

    Decay steps count only the depths that hold parameters (and the head, where head_lr is set): a depth left
    empty (mean pooling's pooler, swapped for a parameter-free one) does not cost the blocks below it a factor."""
    top = layer_map.head_depth
    if spec is None:
        return [base_lr] * (top + 1)
    head_lr = spec.head_lr if spec.head_lr is not None else base_lr
    filled = {d for d in layer_map.depth.values()} | {top}
    # rank[d]: the filled depths at or below d, minus one (0 at the bottom, the head's rank at the top)
    rank, seen = [], -1
    for d in range(top + 1):
        seen += d in filled
        rank.append(max(seen, 0))
    steps = rank[top]
    if spec.layer_decay is not None:
        return [head_lr * spec.layer_decay ** (steps - rank[d]) for d in range(top + 1)]
    if spec.backbone_lr is not None:
        # geometric interpolation from backbone_lr at the bottom to head_lr at the head
        ratio = (head_lr / spec.backbone_lr) ** (1 / max(steps, 1))
        return [spec.backbone_lr * ratio ** rank[d] for d in range(top + 1)]
    return [base_lr] * top + [head_lr]


def assign_lrs(layer_map: LayerMap, names: Iterable[str], base_lr: float, spec=None) -> dict[str, LrAssignment]:
    """name -> (group, lr) for every parameter in `names`: the one place learning rates are resolved.

    `spec` has `lr_groups` (explicit: the first group whose patterns match; others get `base_lr`) or the
    depth-based keys of `depth_lrs`; None gives every depth `base_lr`."""
    groups = getattr(spec, "lr_groups", None)
    if groups is not None:
        out = {}
        for n in names:
            g = next((g for g in groups if matches(n, g.patterns)), None)
            out[n] = LrAssignment(g.name, g.lr) if g else LrAssignment("default", base_lr)
        return out
    lrs = depth_lrs(layer_map, base_lr, spec)
    return {n: LrAssignment(layer_map.labels[layer_map.depth[n]], lrs[layer_map.depth[n]]) for n in names}


def param_groups(model: nn.Module, assignment: dict[str, LrAssignment], weight_decay: float,
                 decay_names: set[str]) -> list[dict]:
    """Optimizer groups (one per assigned group x decay/no-decay) over the parameters in `assignment`,
    in the model's parameter order."""
    keyed: dict[tuple, dict] = {}
    for n, p in model.named_parameters():
        a = assignment.get(n)
        if a is None:
            continue
        decay = n in decay_names
        group = keyed.setdefault((a.group, a.lr, decay), {
            "params": [], "param_names": [], "lr": a.lr, "weight_decay": weight_decay if decay else 0.0,
            "name": a.group})
        group["params"].append(p)
        group["param_names"].append(n)
    return list(keyed.values())
