"""Recipe `strategy:` -> the hooks: layer map, what may train, what trains now, schedule, learning rates.

Every parameter's learning rate is resolved here once (`TransferPlan.lrs`): the optimizer, the plan table and the
card read it. The hooks raise plain errors; this module names the recipe key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from hftl import hooks
from hftl.errors import HftlError
from hftl.hooks import (
    GradualUnfreezing,
    LayerMap,
    LrAssignment,
    TrainableSet,
    assign_lrs,
    build_layer_map,
    build_stages,
    matches,
    names_from_depth,
    reinit,
    select,
    stack_layer_map,
    strip_wrappers,
    tower_layer_map,
    trainable_names,
)
from hftl.recipe import FreezeSpec, StrategySection
from hftl.strategy.table import plan_table


def check_patterns(model: nn.Module, patterns, key: str) -> None:
    """Every pattern of recipe key `key` matches some parameter (hooks.check_patterns), else a recipe error."""
    try:
        hooks.check_patterns(model, patterns)
    except ValueError as e:
        raise HftlError(f"Recipe key '{key}': {e}") from None


def layer_map_for(model: nn.Module, strategy: StrategySection) -> LayerMap:
    o = strategy.layer_map
    # a model that knows its blocks (a truncated distillation student, whose one block is no "repeated" list)
    blocks = o.blocks if o else getattr(model, "hftl_blocks_regex", None)
    towers = None if o else getattr(model, "hftl_towers", None)  # parallel towers (a dual encoder's), set by its task
    parts = None if o else getattr(model, "hftl_parts", None)  # vision -> projector -> language model, set by its task
    try:
        if towers:
            return tower_layer_map(model, towers)
        if parts:
            return stack_layer_map(model, parts)
        return build_layer_map(model, blocks, o.head if o else None)
    except ValueError as e:
        if o is not None:
            raise HftlError(f"Recipe key 'strategy.layer_map.blocks': {e}") from None
        raise HftlError(f"{e} Set them as recipe keys strategy.layer_map.blocks and strategy.layer_map.head.") from None


def apply_reinit(model: nn.Module, strategy: StrategySection) -> int:
    """Re-initialise layers before PEFT wraps the model (LoRA's own init must stay as PEFT made it)."""
    if strategy.reinit is None:
        return 0
    lm = layer_map_for(model, strategy)
    if strategy.reinit.from_depth is not None:
        try:
            start = lm.resolve(strategy.reinit.from_depth)
        except ValueError as e:
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
    notes: list[str] = field(default_factory=list)  # what the training blocks run besides the Trainer

    def table(self) -> str:
        head = "\n".join(self.decision.lines()) + "\n\n" if self.decision is not None else ""
        head += "\n".join(self.notes) + "\n" if self.notes else ""
        return head + plan_table(self.layer_map, self.trainable, self.lrs, self.unfreeze_at)


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
        except ValueError as e:
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
