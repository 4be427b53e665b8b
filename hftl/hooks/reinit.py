"""Partial transfer: re-initialise chosen layers with the model's own init function (Yosinski et al. 2014)."""

from __future__ import annotations

import torch
from torch import nn

from hftl.hooks.layers import LayerMap
from hftl.hooks.names import unwrap


def reinit(model: nn.Module, names: set[str]) -> int:
    """Re-initialise every module whose own parameters are all in `names`. Returns the module count."""
    task = unwrap(model)
    init_fn = getattr(task, "_init_weights", None)
    count = 0
    for mname, module in model.named_modules():
        own = [(f"{mname}.{p}" if mname else p, t) for p, t in module.named_parameters(recurse=False)]
        if not own or not all(n in names for n, _ in own):
            continue
        with torch.no_grad():
            if init_fn is not None:
                # transformers 5 skips tensors flagged as loaded from the checkpoint: clear the flag first, on the
                # buffers too (else BatchNorm keeps the checkpoint's running statistics).
                for t in [t for _, t in own] + list(module.buffers(recurse=False)):
                    if hasattr(t, "_is_hf_initialized"):
                        del t._is_hf_initialized
                init_fn(module)
                if hasattr(module, "reset_running_stats"):
                    module.reset_running_stats()
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                continue
        count += 1
    return count


def names_from_depth(layer_map: LayerMap, from_depth: int) -> set[str]:
    """Blocks and post-block layers at depth >= k; the head is new anyway."""
    return {n for n, d in layer_map.depth.items() if from_depth <= d < layer_map.head_depth}
