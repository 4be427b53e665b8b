"""Model-agnostic transfer-learning hooks. They take a model and a layer map, never a recipe, and raise plain
ValueErrors (the strategy that calls them names the recipe key)."""

from hftl.hooks.discriminative import LrAssignment, assign_lrs, depth_lrs, param_groups
from hftl.hooks.freezing import BatchNormFreezer, select, set_trainable, trainable_names
from hftl.hooks.layers import (HEAD_LABEL, LayerMap, build_layer_map, find_backbone, find_blocks, find_head,
                               pooled_features, task_head)
from hftl.hooks.names import check_patterns, matches, strip_wrappers, under, unwrap
from hftl.hooks.reinit import names_from_depth, reinit
from hftl.hooks.stack import find_parts, stack_layer_map
from hftl.hooks.towers import tower_layer_map
from hftl.hooks.unfreezing import GradualUnfreezing, TrainableSet, build_stages

__all__ = [
    "HEAD_LABEL", "BatchNormFreezer", "GradualUnfreezing", "LayerMap", "LrAssignment", "TrainableSet", "assign_lrs",
    "build_layer_map", "build_stages", "check_patterns", "depth_lrs", "find_backbone", "find_blocks", "find_head",
    "find_parts", "matches", "names_from_depth", "param_groups", "pooled_features", "reinit", "select", "set_trainable",
    "stack_layer_map", "strip_wrappers", "task_head", "tower_layer_map", "trainable_names", "under", "unwrap",
]
