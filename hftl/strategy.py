"""Recipe `strategy:` -> the hooks: layer map, what may train, what trains now, schedule, LRs, the plan table."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from hftl.errors import HftlError
from hftl.hooks import (
    GradualUnfreezing, LayerMap, LrAssignment, TrainableSet, assign_lrs, build_layer_map, build_stages,
    names_from_depth, reinit, select, trainable_names,
)
from hftl.hooks.freezing import check_patterns, matches
from hftl.hooks.layers import HEAD_LABEL, strip_wrappers
from hftl.recipe import FreezeSpec, StrategySection


def layer_map_for(model: nn.Module, strategy: StrategySection) -> LayerMap:
    o = strategy.layer_map
    # a model that knows its blocks (a truncated distillation student, whose one block is no "repeated" list)
    blocks = o.blocks if o else getattr(model, "hftl_blocks_regex", None)
    return build_layer_map(model, blocks, o.head if o else None)


def apply_reinit(model: nn.Module, strategy: StrategySection) -> int:
    """Re-initialise layers before PEFT wraps the model (LoRA's own init must stay as PEFT made it)."""
    if strategy.reinit is None:
        return 0
    lm = layer_map_for(model, strategy)
    if strategy.reinit.from_depth is not None:
        try:
            start = lm.resolve(strategy.reinit.from_depth)
        except HftlError as e:
            raise HftlError(f"Recipe key 'strategy.reinit.from_depth': {e}") from None
        names = names_from_depth(lm, start)
    else:
        check_patterns(model, strategy.reinit.patterns, "strategy.reinit.patterns")
        names = {n for n, _ in model.named_parameters() if matches(n, strategy.reinit.patterns)}
    return reinit(model, names)


@dataclass
class TransferPlan:
    layer_map: LayerMap
    trainable: TrainableSet
    lrs: dict[str, LrAssignment]  # every may-train parameter's group and learning rate: the optimizer's too
    unfreeze_at: dict[int, str]
    callbacks: list = field(default_factory=list)
    decision: object = None  # strategy.preset auto: hftl.auto_strategy.Decision (its evidence heads the table)

    def table(self) -> str:
        head = "\n".join(self.decision.lines()) + "\n\n" if self.decision is not None else ""
        return head + plan_table(self)


def plan_strategy(model: nn.Module, strategy: StrategySection, *, learning_rate: float, distributed: bool) -> TransferPlan:
    if strategy.preset == "auto" and strategy.freeze is None:
        raise HftlError("strategy.preset auto is resolved from the data before planning (hftl.auto_strategy.resolve).")
    lm = layer_map_for(model, strategy)
    freeze = strategy.freeze
    if freeze is None and strategy.preset == "partial":
        freeze = FreezeSpec(below_depth=lm.num_blocks // 2 + lm.input_depths)  # input side + lower half of the blocks
    if isinstance(freeze, FreezeSpec) and freeze.patterns:
        check_patterns(model, freeze.patterns, "strategy.freeze.patterns")
    if isinstance(freeze, FreezeSpec) and freeze.below_depth is not None and freeze.below_depth > lm.head_depth:
        raise HftlError(
            f"Recipe key 'strategy.freeze.below_depth': {freeze.below_depth} is beyond the head; this model has depths "
            f"0..{lm.head_depth} ({lm.describe()})."
        )
    if strategy.unfreeze:
        check_patterns(model, strategy.unfreeze, "strategy.unfreeze")
    candidates = select(lm, trainable_names(model), freeze, strategy.unfreeze)
    if not candidates:
        tied = lm.tied_head()
        if tied:
            head, to = next(iter(tied.items()))
            raise HftlError(
                f"The strategy leaves no parameter to train: the head's {strip_wrappers(head)} is tied to "
                f"{strip_wrappers(to)} (one parameter, at depth {lm.depth[to]}), so freezing the backbone freezes the "
                "head too. Unfreeze the shared weight (strategy.unfreeze: ['" + strip_wrappers(to) + "']: it then trains as "
                "input embeddings and head at once), or add a peft: section.")
        raise HftlError(
            "The strategy leaves no parameter to train (strategy.freeze freezes everything and nothing is unfrozen). "
            "Use freeze: backbone to keep the head trainable, add strategy.unfreeze patterns, or add a peft: section."
        )
    gu = strategy.gradual_unfreezing
    trainable = TrainableSet(model, lm, candidates, freeze_all_batchnorm=bool(strategy.freeze_batchnorm),
                             mask_grads=distributed and gu is not None)
    unfreeze_at = {d: "start" for d in trainable.candidate_depths()}
    callbacks = []
    if gu is not None:
        try:
            unit, stages = build_stages(lm, trainable.candidate_depths(), gu)
        except (ValueError, HftlError) as e:
            raise HftlError(f"Recipe key 'strategy.gradual_unfreezing': {e}") from None
        unfreeze_at = {}
        for at, depths in stages:
            for d in depths:
                unfreeze_at.setdefault(d, "start" if at == 0 else f"{unit} {at}")
        trainable.activate_depths(stages[0][1])
        callbacks.append(GradualUnfreezing(trainable, unit, stages))
    else:
        trainable.activate(candidates)
    spec = strategy.discriminative_lr
    for i, group in enumerate((spec.lr_groups if spec else None) or []):
        check_patterns(model, group.patterns, f"strategy.discriminative_lr.lr_groups[{i}].patterns")
    lrs = assign_lrs(lm, trainable.candidates, learning_rate, spec)
    return TransferPlan(lm, trainable, lrs, unfreeze_at, callbacks)


def _modules_at(names: list[str], limit: int = 3) -> str:
    mods = []
    for n in names:
        parts = strip_wrappers(n).split(".")
        # module path without the parameter (and the adapter internals PEFT adds)
        for marker in ("lora_A", "lora_B", "base_layer", "modules_to_save", "original_module", "lora_magnitude_vector"):
            if marker in parts:
                parts = parts[: parts.index(marker) + 1]
        m = ".".join(parts[:-1][:4]) or parts[0]
        if m not in mods:
            mods.append(m)
    shown = ", ".join(mods[:limit])
    return shown + (f", +{len(mods) - limit} more" if len(mods) > limit else "")


def _lr_cell(lrs: list[float]) -> str:
    return " / ".join(f"{lr:.2e}" for lr in sorted(set(lrs))) if lrs else "-"


def plan_table(plan: TransferPlan) -> str:
    """A markdown table: depth, modules, parameters, trainable now, LR at step 0, when it unfreezes."""
    lm, ts = plan.layer_map, plan.trainable
    params = ts.params
    rows = ["| depth | group | modules | params | trainable | lr (step 0) | unfreezes |",
            "|---:|---|---|---:|---|---:|---|"]
    total = trainable_now = 0
    for d, label in enumerate(lm.labels):
        names = lm.names_at(d)
        if not names:
            continue
        count = sum(params[n].numel() for n in names)
        cand = [n for n in names if n in ts.candidates]
        active = [n for n in names if n in ts.active]
        total += count
        trainable_now += sum(params[n].numel() for n in active)
        if not cand:
            state = "frozen"
        elif len(active) == len(cand):
            state = "yes" if len(cand) == len(names) else f"partly ({sum(params[n].numel() for n in cand):,})"
        else:
            state = "not yet"
        lr = _lr_cell([plan.lrs[n].lr for n in cand])
        rows.append(f"| {d} | {label} | {_modules_at(names)} | {count:,} | {state} | {lr} | "
                    f"{plan.unfreeze_at.get(d, 'never') if cand else 'never'} |")
    tied = lm.tied_head()
    if tied and not lm.names_at(lm.head_depth):
        shown = ", ".join(f"{strip_wrappers(n).rsplit('.', 1)[0]} (tied to {strip_wrappers(to).rsplit('.', 1)[0]})"
                          for n, to in tied.items())
        rows.append(f"| {lm.head_depth} | {HEAD_LABEL} | {shown} | 0 (tied) | with depth "
                    f"{', '.join(str(lm.depth[to]) for to in tied.values())} | - | - |")
    pct = 100 * trainable_now / max(total, 1)
    rows.append(f"\nTrainable at step 0: {trainable_now:,} of {total:,} parameters ({pct:.2f}%).")
    for n, to in tied.items():
        d = lm.depth[to]
        state = "trains with them" if to in ts.candidates else "stays frozen with them"
        rows.append(f"Tied weights: the head's {strip_wrappers(n)} is {strip_wrappers(to)} (one parameter, depth {d} "
                    f"{lm.labels[d]}): it trains exactly when depth {d} does, at its learning rate; here it {state}.")
    adapted = sorted({strip_wrappers(n).split(".base_layer.")[0] for n in params if ".base_layer." in n})
    if adapted:  # PEFT: which modules target_modules matched
        leaves = sorted({a.rsplit(".", 1)[-1] for a in adapted})
        rows.append(f"Adapter on {len(adapted)} modules ({', '.join(leaves)}), e.g. {adapted[0]}.")
    saved = sorted({strip_wrappers(n).split(".modules_to_save.")[0] for n in params if ".modules_to_save." in n})
    if saved:
        rows.append(f"Trained and saved with the adapter (modules_to_save): {', '.join(saved)}.")
    return "\n".join(rows)
