"""The layer map of parallel towers: a dual encoder's image and text encoders (CLIP, SigLIP, VisionTextDualEncoder).

Each tower's blocks are found as in any backbone (layers.find_blocks) and numbered from the top: the top block of
every tower sits at depth L (L: the longest tower's block count), so discriminative learning rates decay per tower
from the head down and gradual unfreezing reaches both towers' top blocks together. A tower's parameters before its
first block (its embeddings) take the depth below that block; those after its last block (final norms, poolers)
the shared post depth L + 1; everything outside the towers (the projections, the logit scale) is the head, L + 2.
"""

from __future__ import annotations

from torch import nn

from hftl.hooks.layers import HEAD_LABEL, POST_LABEL, LayerMap, find_blocks
from hftl.hooks.names import strip_wrappers, under, unwrap


def tower_layer_map(model: nn.Module, towers: list[str]) -> LayerMap:
    """Depth of every parameter of a model (wrapped or not) whose `towers` (module paths) run side by side."""
    task = unwrap(model)
    names = [n for n, _ in model.named_parameters()]
    inner = [strip_wrappers(n) for n in names]
    blocks = {}
    for t in towers:
        found = find_blocks(task.get_submodule(t), t + ".")
        if not found:
            raise ValueError(f"Cannot find the repeated blocks of the tower '{t}' of {type(task).__name__}.")
        blocks[t] = found
    top = max(len(b) for b in blocks.values())
    first = {t: min(i for i, n in enumerate(inner) if any(under(n, b) for b in blocks[t])) for t in towers}
    depth = {}
    for i, (wrapped, n) in enumerate(zip(names, inner)):
        tower = next((t for t in towers if under(n, t)), None)
        if tower is None:
            depth[wrapped] = top + 2
            continue
        offset = top - len(blocks[tower])
        index = next((k for k, b in enumerate(blocks[tower]) if under(n, b)), None)
        if index is not None:
            depth[wrapped] = offset + index + 1
        else:
            depth[wrapped] = offset if i < first[tower] else top + 1
    labels = []
    for d in range(top + 1):
        parts = []
        for t in towers:
            offset = top - len(blocks[t])
            if d == offset:
                parts.append(f"{t} embeddings")
            elif offset < d:
                parts.append(blocks[t][d - offset - 1])
        labels.append(" + ".join(parts))
    heads = sorted({n.split(".")[0] for n in inner if not any(under(n, t) for t in towers)})
    return LayerMap(depth=depth, labels=[*labels, POST_LABEL, HEAD_LABEL],
                    blocks=[b for t in towers for b in blocks[t]], head_modules=heads)
