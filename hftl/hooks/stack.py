"""The layer map of a vision-language model: vision tower -> projector -> language model, in the order data flows.

Depth 0 is the vision tower's input side (its patch embedding or stem); its blocks follow (what comes after its
last block, a final norm or 1x1 conv, takes that block's depth); then the projector (one depth); then the language
model's token embeddings, its blocks, its final norm ("post") and the LM head ("head"). So `freeze.below_depth`,
discriminative learning rates and gradual unfreezing reach all three parts, from the head down.

The parts are found by the names transformers gives them (LLaVA, FastVLM, PaliGemma, Gemma 3: vision_tower,
multi_modal_projector, language_model; Idefics3 / SmolVLM: vision_model, connector, text_model; Qwen2-VL and
Qwen2.5-VL: visual, visual.merger, language_model).
"""

from __future__ import annotations

from torch import nn

from hftl.hooks.layers import HEAD_LABEL, POST_LABEL, LayerMap, find_blocks, tied_names
from hftl.hooks.names import strip_wrappers, under, unwrap

VISION = ("vision_tower", "vision_model", "visual", "vision_encoder", "image_encoder")
PROJECTOR = ("multi_modal_projector", "connector", "mm_projector", "merger", "projector", "vision_projection")
LANGUAGE = ("language_model", "text_model")


def _child(module: nn.Module, prefix: str, names: tuple[str, ...]) -> str | None:
    for n in names:
        if isinstance(getattr(module, n, None), nn.Module):
            return prefix + n
    return None


def find_parts(model: nn.Module) -> dict[str, str] | None:
    """{"vision", "projector", "language"}: module paths in the unwrapped model, or None when it is not a
    vision-language model of a known shape."""
    task = unwrap(model)
    for prefix in ("", "model."):
        base = task.get_submodule(prefix[:-1]) if prefix else task
        vision, language = _child(base, prefix, VISION), _child(base, prefix, LANGUAGE)
        if vision is None or language is None:
            continue
        # the projector sits beside the towers, or at the end of the vision tower (Qwen2-VL's visual.merger)
        projector = _child(base, prefix, PROJECTOR) or _child(task.get_submodule(vision), vision + ".", PROJECTOR)
        if projector is not None:
            return {"vision": vision, "projector": projector, "language": language}
    return None


def stack_layer_map(model: nn.Module, parts: dict[str, str]) -> LayerMap:
    """Depth of every parameter of a vision-language model (wrapped or not) with these parts (find_parts)."""
    task = unwrap(model)
    projector = parts["projector"]
    blocks = {}
    for key in ("vision", "language"):
        found = find_blocks(task.get_submodule(parts[key]), parts[key] + ".")
        if not found:
            raise ValueError(f"Cannot find the repeated blocks of the {key} part '{parts[key]}' of {type(task).__name__}.")
        blocks[key] = found
    v, t = len(blocks["vision"]), len(blocks["language"])
    proj, lm_embed, post, head = v + 1, v + 2, v + t + 3, v + t + 4
    names = [n for n, _ in model.named_parameters()]
    inner = [strip_wrappers(n) for n in names]
    depth = {}
    for key, base, before, after in (("vision", 1, 0, v), ("language", v + 3, lm_embed, post)):
        members = [i for i, n in enumerate(inner) if under(n, parts[key]) and not under(n, projector)]
        index = {i: next((k for k, b in enumerate(blocks[key]) if under(inner[i], b)), None) for i in members}
        in_blocks = [i for i in members if index[i] is not None]
        upcoming = None  # a part between two blocks (a stage's downsampling) takes the next block's depth
        for i in reversed(members):
            upcoming = index[i] if index[i] is not None else upcoming
            depth[names[i]] = (before if i < in_blocks[0] else after if i > in_blocks[-1] else base + upcoming)
    for i, n in enumerate(inner):
        if names[i] not in depth:
            depth[names[i]] = proj if under(n, projector) else head  # the LM head, and anything beside the parts
    labels = (["vision embeddings", *blocks["vision"], projector, "embeddings", *blocks["language"],
               POST_LABEL, HEAD_LABEL])
    roots = [p.split(".")[0] for p in parts.values()]
    heads = [n for n, m in task.named_children() if n not in roots and any(True for _ in m.parameters())]
    return LayerMap(depth=depth, labels=labels, blocks=[*blocks["vision"], *blocks["language"]], tied=tied_names(model),
                    head_modules=heads)
