"""Layer map: give every parameter a depth, for any architecture.

embeddings / stem = 0, repeated block i of the backbone = i + 1 (encoder-decoder models: the encoder's blocks,
then the decoder's), whatever follows the blocks (final
norm, pooler) = L + 1, the task head = L + 2. A second repeated stack on the input side, before the first
block (the convolutional feature encoder of Wav2Vec2 / HuBERT / WavLM), gets its own depth 0 below the
embeddings, which then move to 1 (and everything above up by one). Blocks are found generically (the repeated
ModuleList/Sequential holding most of the backbone's parameters, flattened one level for staged
CNNs such as `encoder.stages.N.layers.M`); a timm model's own `group_matcher` is used where it has one.
PEFT / DDP / torch.compile wrappers are seen through: a LoRA parameter takes the depth of the layer it adapts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from hftl.hooks.names import matches, strip_wrappers, under, unwrap

HEAD_LABEL = "head"
POST_LABEL = "post"


@dataclass
class LayerMap:
    """`depth[name]` for every parameter name of the model it was built from (wrapper names included)."""

    depth: dict[str, int]
    labels: list[str]  # labels[d] names depth d: "embeddings", "encoder.layer.0", ..., "post", "head"
    blocks: list[str] = field(default_factory=list)  # module paths of the blocks, in order
    input_depths: int = 1  # depths below the first block: embeddings, or feature encoder + embeddings
    # Tied weights: {second name: the name it is listed under}. torch lists a shared tensor once, under its
    # first name (a language model's head under the input embeddings), so it has that name's depth only.
    tied: dict[str, str] = field(default_factory=dict)
    head_modules: list[str] = field(default_factory=list)  # module paths of the head (found, not patterns)

    def tied_head(self) -> dict[str, str]:
        """{head parameter: the parameter it is} for head weights tied to a parameter outside the head."""
        return {n: to for n, to in self.tied.items()
                if any(under(strip_wrappers(n), h) for h in self.head_modules) and self.depth.get(to) != self.head_depth}

    @property
    def num_blocks(self) -> int:
        return len(self.labels) - 2 - self.input_depths

    @property
    def head_depth(self) -> int:
        return len(self.labels) - 1

    def names_at(self, depth: int) -> list[str]:
        return [n for n, d in self.depth.items() if d == depth]

    def resolve(self, spec: int | str) -> int:
        """A depth given as an int, 'head', 'post', 'embeddings', or a block label -> depth."""
        if isinstance(spec, int) and not isinstance(spec, bool):
            if not 0 <= spec <= self.head_depth:
                raise ValueError(f"Depth {spec} is out of range: this model has depths 0..{self.head_depth} ({self.describe()}).")
            return spec
        if isinstance(spec, str) and spec.lstrip("-").isdigit():
            return self.resolve(int(spec))
        if spec in self.labels:
            return self.labels.index(spec)
        raise ValueError(f"'{spec}' is not a depth of this model; use a number 0..{self.head_depth} or one of: {self.describe()}.")

    def describe(self) -> str:
        if len(self.labels) <= 6:
            return ", ".join(f"{i}={l}" for i, l in enumerate(self.labels))
        first, last = self.input_depths, self.input_depths + self.num_blocks - 1
        low = ", ".join(f"{i}={self.labels[i]}" for i in range(first))
        return (f"{low}, {first}={self.labels[first]} .. {last}={self.labels[last]}, "
                f"{last + 1}={POST_LABEL}, {self.head_depth}={HEAD_LABEL}")


# ------------------------------------------------------------------------------------------ head detection


def find_head(model: nn.Module) -> list[str]:
    """Module paths of the task head, relative to the unwrapped task model."""
    task = unwrap(model)
    timm_model, prefix = _timm_model(task)
    if timm_model is not None:
        name = (getattr(timm_model, "pretrained_cfg", None) or {}).get("classifier")
        if not name and hasattr(timm_model, "get_classifier"):
            clf = timm_model.get_classifier()
            name = next((n for n, m in timm_model.named_modules() if m is clf), None)
        if name:
            return [prefix + name]
    name, backbone = find_backbone(task)
    if backbone is None:
        return []
    children = [n for n, m in task.named_children() if any(True for _ in m.parameters())]
    if name != getattr(task, "base_model_prefix", ""):
        children = children[children.index(name):]  # found by structure: the head follows the backbone
    # transformers: everything beside the backbone attribute (classifier, pre_classifier, score, projector...)
    return [n for n in children if n != name]


def task_head(model: nn.Module) -> nn.Module | None:
    """The head's first module, whose input is the features the head reads; None when no head is found."""
    heads = find_head(model)
    return unwrap(model).get_submodule(heads[0]) if heads else None


def pooled_features(x, mask=None):
    """One vector per example from a head's input: vectors as they are, token sequences mean-pooled (over `mask`,
    the attention mask, where it fits), feature maps averaged over positions."""
    if x.dim() == 3:
        if mask is not None and mask.shape == x.shape[:2]:
            m = mask.unsqueeze(-1).to(x.dtype)
            return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return x.mean(1)
    if x.dim() == 4:
        return x.mean((2, 3))
    return x.flatten(1)


def find_backbone(task: nn.Module) -> tuple[str, nn.Module | None]:
    """(attribute, module) of the task model's backbone, or ("", None).

    transformers' `base_model_prefix` where the model has that attribute; otherwise the one direct child
    that holds the repeated blocks below it, with parameters beside it. (CLIP/SigLIP image classifiers keep
    their vision tower as `vision_model` while their prefix names the dual-encoder model: 'clip', 'siglip'.)
    """
    prefix = getattr(task, "base_model_prefix", "")
    module = getattr(task, prefix, None) if prefix else None
    if isinstance(module, nn.Module) and module is not task:
        return prefix, module
    best = _block_container(task)
    if best is None or "." not in best[0]:  # no blocks, or the block list is itself a direct child
        return "", None
    name = best[0].split(".")[0]
    child = getattr(task, name, None)
    beside = any(n != name and any(True for _ in m.parameters()) for n, m in task.named_children())
    return (name, child) if isinstance(child, nn.Module) and beside else ("", None)


def _timm_model(task: nn.Module) -> tuple[nn.Module | None, str]:
    if hasattr(task, "timm_model"):  # transformers' TimmWrapperForImageClassification
        return task.timm_model, "timm_model."
    if type(task).__module__.startswith("timm."):
        return task, ""
    return None, ""


# ------------------------------------------------------------------------------------------ block detection


def _repeated_lists(module: nn.Module, prefix: str = ""):
    """Yield (path, container) for ModuleList/Sequential with >= 2 children of one type."""
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, (nn.ModuleList, nn.Sequential)) and len(child) >= 2:
            kinds = {type(c) for c in child}
            if len(kinds) == 1 or all(isinstance(c, (nn.ModuleList, nn.Sequential)) for c in child):
                yield path, child
        yield from _repeated_lists(child, path + ".")


def _num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _block_container(backbone: nn.Module):
    """(path, container) of the repeated ModuleList/Sequential holding the most parameters, or None."""
    best, best_size = None, 0
    for path, container in _repeated_lists(backbone):
        size = _num_params(container)
        if size > best_size:
            best, best_size = (path, container), size
    return best


def find_blocks(backbone: nn.Module, prefix: str = "") -> list[str]:
    """Ordered module paths of the backbone's repeated blocks (staged CNNs flattened one level)."""
    best = _block_container(backbone)
    if best is None:
        return []
    path, container = best
    blocks = []
    for i, stage in enumerate(container):
        stage_path = f"{prefix}{path}.{i}"
        inner = _stage_blocks(stage)
        if inner is not None:
            # A stage of blocks (ConvNeXt/ResNet `stages.N.layers.M`): each block gets its own depth; the
            # stage's other parts (downsampling) take the depth of the block they feed (see build_layer_map).
            name, lst = inner
            blocks += [f"{stage_path}.{name}.{j}" for j in range(len(lst))]
        else:
            blocks.append(stage_path)
    return blocks


def _stage_blocks(stage: nn.Module):
    """The direct child list of one block type holding most of a stage's parameters, if any."""
    total = _num_params(stage)
    for name, child in stage.named_children():
        if (isinstance(child, (nn.ModuleList, nn.Sequential)) and len(child) >= 1
                and len({type(c) for c in child}) == 1 and _num_params(child) > 0.5 * total):
            return name, child
    return None


# ------------------------------------------------------------------------------------------ the map


def tied_names(model: nn.Module) -> dict[str, str]:
    """{second name: the name torch lists it under} for every parameter shared under two names."""
    first_name: dict[int, str] = {}
    tied = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first_name and first_name[id(p)] != n:
            tied[n] = first_name[id(p)]
        first_name.setdefault(id(p), n)
    return tied


def build_layer_map(model: nn.Module, blocks_regex: str | None = None, head_patterns: list[str] | None = None) -> LayerMap:
    """Depth of every parameter of `model` (wrapped or not). Raises ValueError when blocks cannot be found."""
    task = unwrap(model)
    names = [n for n, _ in model.named_parameters()]
    inner_names = [strip_wrappers(n) for n in names]
    tied = tied_names(model)

    head = list(head_patterns) if head_patterns else find_head(task)

    def is_head(n: str) -> bool:
        if head_patterns:
            return matches(n, head)
        return any(under(n, h) for h in head)

    if blocks_regex:
        keys = _blocks_from_regex(inner_names, blocks_regex)
        ordered_keys = sorted(set(keys.values()))
        blocks = [".".join(map(str, k)) for k in ordered_keys]
        block_index = {n: ordered_keys.index(k) for n, k in keys.items()}
    else:
        timm_model, tprefix = _timm_model(task)
        groups = _timm_groups(timm_model, tprefix, inner_names) if timm_model is not None else None
        if groups:
            return _finish_timm(names, inner_names, groups, is_head, tprefix)
        base_prefix, backbone = find_backbone(task)
        if backbone is None:
            backbone, base_prefix = task, ""
        bprefix = base_prefix + "." if base_prefix else ""
        blocks = _encoder_decoder_blocks(task) or find_blocks(backbone, bprefix)
        block_index = {}
        for n in inner_names:
            i = next((i for i, b in enumerate(blocks) if under(n, b)), None)
            if i is not None:
                block_index[n] = i
    if not blocks:
        raise ValueError(
            f"Cannot find the repeated blocks of {type(task).__name__}: no ModuleList/Sequential of repeated layers. "
            r"Give a regex whose first group numbers the blocks, e.g. 'encoder\.layer\.(\d+)\.', and the head's "
            "parameter patterns.")
    # In registration order: parameters before the first block are input-side (0), after the last block
    # output-side (L+1); a stage's own parts (e.g. downsampling) between blocks take the next block's depth.
    L = len(blocks)
    first = min(i for i, n in enumerate(inner_names) if n in block_index)
    next_block: list[int | None] = [None] * len(inner_names)
    upcoming = None
    for i in range(len(inner_names) - 1, -1, -1):
        upcoming = block_index.get(inner_names[i], upcoming)
        next_block[i] = upcoming
    depth: dict[str, int] = {}
    for i, (wrapped, n) in enumerate(zip(names, inner_names)):
        if is_head(n):
            depth[wrapped] = L + 2
        elif n in block_index:
            depth[wrapped] = block_index[n] + 1
        elif i < first or "prompt_encoder" in wrapped:  # PEFT prompt/prefix encoders act on the input
            depth[wrapped] = 0
        elif next_block[i] is not None:
            depth[wrapped] = next_block[i] + 1
        else:
            depth[wrapped] = L + 1
    short = [_short(b) for b in blocks]
    if len(set(short)) < len(short):  # encoder.block.0 and decoder.block.0 are both block.0 for short
        short = list(blocks)
    labels = ["embeddings"] + short + [POST_LABEL, HEAD_LABEL]
    stack = None if blocks_regex else _input_stack(backbone, bprefix, inner_names[:first])
    heads = [] if head_patterns else head
    if stack is None:
        return LayerMap(depth=depth, labels=labels, blocks=list(blocks), tied=tied, head_modules=heads)
    depth = {w: 0 if any(under(n, stack) for n in (w, strip_wrappers(w))) else d + 1 for w, d in depth.items()}
    return LayerMap(depth=depth, labels=[_short(stack)] + labels, blocks=list(blocks), input_depths=2, tied=tied,
                    head_modules=heads)


def _encoder_decoder_blocks(task: nn.Module) -> list[str]:
    """The encoder's blocks, then the decoder's, of an encoder-decoder model (T5, BART, Marian ...); [] otherwise.
    What lies between the two stacks (the encoder's final norm, the decoder's embeddings) takes the depth of
    the first decoder block, as any part between blocks takes the next block's."""
    config = getattr(task, "config", None)
    if not (getattr(config, "is_encoder_decoder", False) and hasattr(task, "get_encoder") and hasattr(task, "get_decoder")):
        return []
    try:
        encoder, decoder = task.get_encoder(), task.get_decoder()
    except (AttributeError, NotImplementedError):
        return []
    paths = {id(m): n for n, m in task.named_modules()}
    if id(encoder) not in paths or id(decoder) not in paths:
        return []
    enc, dec = find_blocks(encoder, paths[id(encoder)] + "."), find_blocks(decoder, paths[id(decoder)] + ".")
    return enc + dec if enc and dec else []


def _input_stack(backbone: nn.Module, prefix: str, input_side: list[str]) -> str | None:
    """The largest ModuleList of >= 2 layers whose parameters all come before the first block (a conv feature
    encoder; its first layer may differ, e.g. Wav2Vec2's group-norm conv), as a module path; None when the
    input side has no such stack."""
    before = set(input_side)
    best, best_size = None, 0
    for path, container in backbone.named_modules():
        if not (isinstance(container, nn.ModuleList) and sum(_num_params(c) > 0 for c in container) >= 2):
            continue
        names = [f"{prefix}{path}.{n}" for n, _ in container.named_parameters()]
        size = _num_params(container)
        if names and all(n in before for n in names) and size > best_size:
            best, best_size = f"{prefix}{path}", size
    return best


def _blocks_from_regex(names: list[str], regex: str) -> dict[str, tuple]:
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise ValueError(f"{regex!r} is not a valid regex ({e}).") from None
    if pattern.groups < 1:
        raise ValueError(f"{regex!r} needs a group that numbers the blocks, e.g. 'layers\\.(\\d+)\\.'.")
    out = {}
    for n in names:
        m = pattern.search(n)
        if m:
            out[n] = tuple(int(g) if g.isdigit() else g for g in m.groups() if g is not None)
    if not out:
        raise ValueError(f"{regex!r} matches no parameter name (e.g. {names[len(names) // 2]!r}).")
    return out


def _short(path: str) -> str:
    """A block's label: its module path without the wrapper / backbone attribute."""
    path = path.removeprefix("timm_model.")
    head, _, rest = path.partition(".")
    return rest if rest and not head.isdigit() and not rest[:1].isdigit() else path


def _timm_groups(timm_model: nn.Module, prefix: str, inner_names: list[str]):
    """Order parameters with a timm model's own `group_matcher` (fine-grained).

    -> {inner name: "stem" | "post" | ordinal tuple}, or None when the model declares no usable matcher.
    timm pins the final norm at ordinal 99999; parameters no rule matches are the head.
    """
    matcher = getattr(timm_model, "group_matcher", None)
    spec = matcher(coarse=False) if matcher else None
    if not isinstance(spec, dict):
        return None
    rules = []
    for key, value in spec.items():
        pairs = value if isinstance(value, (list, tuple)) else [(value, None)]
        rules += [(key, re.compile(regex), suffix) for regex, suffix in pairs]
    out = {}
    for n in inner_names:
        if not n.startswith(prefix):
            continue
        rel = _strip_adapter(n[len(prefix):])
        for key, regex, suffix in rules:
            m = regex.match(rel)
            if m:
                if suffix and suffix[0] >= 99999:
                    out[n] = "post"
                elif key == "stem":
                    out[n] = "stem"
                else:
                    out[n] = tuple(int(g) for g in m.groups() if g is not None) + tuple(suffix or ())
                break
    return out


def _finish_timm(names, inner_names, groups, is_head, prefix) -> LayerMap:
    ordinals = sorted({g for g in groups.values() if isinstance(g, tuple)})
    index = {o: i + 1 for i, o in enumerate(ordinals)}
    L = len(ordinals)
    depth = {}
    for wrapped, n in zip(names, inner_names):
        g = groups.get(n)
        if is_head(n):
            depth[wrapped] = L + 2
        elif g == "stem" or "prompt_encoder" in wrapped:
            depth[wrapped] = 0
        elif g is None or g == "post":
            depth[wrapped] = L + 1
        else:
            depth[wrapped] = index[g]
    block_paths = [_common_prefix([n for n in inner_names if groups.get(n) == o]) for o in ordinals]
    labels = ["stem"] + [_short(p) for p in block_paths] + [POST_LABEL, HEAD_LABEL]
    return LayerMap(depth=depth, labels=labels, blocks=block_paths)


_ADAPTER_PARTS = re.compile(r"\.(lora_[A-Za-z_]+|hada_[a-z0-9_]+|lokr_[a-z0-9_]+|ia3_l|lora_magnitude_vector)(\.[^.]+)?(?=\.)")


def _strip_adapter(name: str) -> str:
    """`x.q.lora_A.default.weight` -> `x.q.weight`; `x.q.base_layer.weight` -> `x.q.weight` (timm group lookup)."""
    name = _ADAPTER_PARTS.sub("", name)
    return name.replace(".base_layer.", ".").replace(".original_module.", ".").replace(".modules_to_save.default.", ".")


def _common_prefix(params: list[str]) -> str:
    parts = [p.split(".") for p in params]
    out = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        out.append(items[0])
    return ".".join(out)
