"""Speed defaults: levers the libraries already hold or that only change how an update is computed, switched on
where they help at equal results. Each one is a recipe key (the recipe's value wins) and each one used is named
in the plan's header and the card ("speed: ..."):

- length-sorted micro-batches (`speed.micro_batch: auto`, on CPUs 16 where a batch holds two, else 8): each
  training batch of token sequences is split into micro-batches of similar length, each padded to its own
  longest, and their gradients are summed, weighted by their share of the batch: the batch and its update are the
  ones the Trainer would make, with less padding (2,000 tweets, batch 32: a random batch holds 1.75x the tokens of
  its texts, 2 sorted micro-batches of 16 1.38x, 4 of 8 1.18x; yet 8 and 16 came out ahead in turn in
  interleaved runs: 8 loses to smaller matrix products what it saves in padding). Length-grouped *batches*
  (`training.train_sampling_strategy: group_by_length`) pad even less but change what a batch holds: on these
  tweets (positive ones are shorter) MiniLM fell from 0.91 to 0.82 after one epoch, so they are not a default;
  hftl's sampler for them shuffles the batches and keeps evaluation in order;
- bf16 autocast (`training.bf16`) where the hardware multiplies bf16 matrices natively: a CUDA GPU that supports
  bf16, a CPU with AMX or AVX512-BF16. Not on other CPUs (AVX2 emulates bf16: slower than float32);
- padding to a multiple of 8 (`speed.pad_to_multiple_of: auto`) on CUDA (tensor cores want aligned shapes);
  not on CPUs, where it only adds padding;
- channels_last memory layout (`speed.channels_last: auto`) for convolutional networks;
- kept as transformers 5 sets them, for hftl and a plain script alike: fused AdamW (`optim: adamw_torch_fused`)
  and SDPA attention.
"""

from __future__ import annotations

import pyarrow.compute as pc
import torch
from torch import nn
from torch.utils.data import Sampler

GROUPED = "group_by_length"


def bf16_native(device: torch.device | None = None) -> bool:
    """Whether `device` (default: where the Trainer trains) multiplies bf16 matrices in hardware."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


def training_defaults(training: dict) -> dict:
    """TrainingArguments defaults hftl chooses before the model trains (the recipe's own keys win)."""
    if "bf16" in training or training.get("fp16"):
        return {}
    device = "cpu" if training.get("use_cpu") or not torch.cuda.is_available() else "cuda"
    return {"bf16": True} if bf16_native(torch.device(device)) else {}


def token_lengths(dataset) -> list[int] | None:
    """Each example's number of input tokens, read from the `input_ids` column in one go; None without one
    (images, cached features, inputs the collator builds)."""
    if "input_ids" not in (getattr(dataset, "column_names", None) or []):
        return None
    return pc.list_value_length(dataset.with_format("arrow")[:]["input_ids"]).to_pylist()


class LengthGroupedBatches(Sampler):
    """Batches of examples of similar length, in random order: a random permutation cut into megabatches of 50
    batches, each sorted by length and cut into batches; then the batches are shuffled. (transformers'
    LengthGroupedSampler keeps each megabatch's batches longest first, so an epoch's first steps all see its
    longest inputs.) A short last batch stays last, so the DataLoader cuts the same batches."""

    def __init__(self, lengths: list[int], batch_size: int, megabatches: int = 50):
        self.lengths, self.batch_size, self.mega = lengths, batch_size, megabatches * batch_size

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths)).tolist()
        batches = []
        for start in range(0, len(order), self.mega):
            chunk = sorted(order[start:start + self.mega], key=self.lengths.__getitem__, reverse=True)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        last = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        shuffled = [batches[i] for i in torch.randperm(len(batches)).tolist()] + last
        return iter([i for batch in shuffled for i in batch])


def conv_net(model: nn.Module) -> bool:
    """A convolutional network (ResNet, EfficientNet, ConvNeXt ...), not a transformer with a patch-embedding
    convolution: several 2-d convolutions."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= 3


def apply(s) -> list[str]:
    """Apply the defaults that need the built run (datasets, collator, model, cache) to it; return what the run
    uses for speed, for the plan's header."""
    args, section = s.args, s.recipe.speed
    on_gpu = args.device.type == "cuda"
    used = []
    # the token inputs' lengths, also where the run trains on cached features: the same batches as without the
    # cache, so the cache changes nothing but the speed
    s.train_lengths = token_lengths(s.train_dataset)
    if args.train_sampling_strategy == GROUPED:
        used.append("length-grouped batches (training.train_sampling_strategy)")
    s.micro_batch = _micro_batch(s, section.micro_batch, on_gpu)
    if s.micro_batch:
        used.append(f"length-sorted micro-batches of {s.micro_batch} (speed.micro_batch)")
    multiple = (8 if on_gpu else None) if section.pad_to_multiple_of == "auto" else section.pad_to_multiple_of
    if multiple and s.cache is None and hasattr(s.collator, "pad_to_multiple_of"):
        s.collator.pad_to_multiple_of = multiple
        used.append(f"padding to a multiple of {multiple} (speed.pad_to_multiple_of)")
    if section.channels_last is True or (section.channels_last == "auto" and conv_net(s.model)):
        s.model.to(memory_format=torch.channels_last)
        used.append("channels_last convolutions (speed.channels_last)")
    if args.bf16:
        used.append("bf16 autocast (training.bf16)")
    elif args.fp16:
        used.append("fp16 autocast (training.fp16)")
    optim = getattr(args.optim, "value", args.optim)
    if "fused" in optim:
        used.append(f"fused AdamW (training.optim: {optim})")
    attention = getattr(getattr(s.model, "config", None), "_attn_implementation", None)
    if attention:
        used.append(f"{attention} attention")
    if args.torch_compile:
        used.append("torch.compile (training.torch_compile)")
    return used


def _micro_batch(s, value, on_gpu: bool) -> int | None:
    """The micro-batch size for length-sorted micro-batches, or None: only where batches of token sequences of
    different lengths reach the model (not cached features), with no BatchNorm (its statistics would be the
    micro-batch's), and a batch of at least two micro-batches."""
    if value is None or s.cache is not None or s.train_lengths is None or len(set(s.train_lengths)) < 2:
        return None
    if value == "auto":
        if on_gpu or any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in s.model.modules()):
            return None
        value = 16 if s.args.per_device_train_batch_size >= 32 else 8  # benchmarks/results/speed.md
    return value if s.args.per_device_train_batch_size >= 2 * value else None


SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "special_tokens_mask")


def sorted_chunks(batch: dict, size: int) -> list[tuple[dict, int]] | None:
    """A right-padded batch of token sequences as micro-batches of `size` examples sorted by length, each cut to its
    own longest sequence, with their number of examples; None for a batch this does not apply to (no 2-d
    attention mask, left padding, fewer than two micro-batches)."""
    mask = batch.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or len(mask) < 2 * size:
        return None
    if not bool((mask[:, :-1] >= mask[:, 1:]).all()):  # left padding: cutting columns would cut tokens
        return None
    rows, width = mask.shape
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    chunks = []
    for start in range(0, rows, size):
        idx = order[start:start + size]
        w = int(lengths[idx].max())
        chunk = {}
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or len(value) != rows:
                chunk[key] = value
                continue
            value = value[idx]
            token_labels = key == "labels" and value.dim() == 2 and not value.is_floating_point()
            if (key in SEQUENCE_KEYS or token_labels) and value.dim() >= 2 and value.shape[1] == width:
                value = value[:, :w].contiguous()
            chunk[key] = value
        chunks.append((chunk, len(idx)))
    return chunks


def averaged_items(batch: dict, examples: int) -> int:
    """What a mean loss over `batch` averages: its labelled tokens for per-token labels (-100 elsewhere), else its
    examples."""
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() == 2 and not labels.is_floating_point():
        return int((labels != -100).sum())
    return examples


def plan_line(used: list[str]) -> str:
    return "speed: " + ", ".join(used) if used else ""
