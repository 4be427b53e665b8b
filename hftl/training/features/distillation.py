"""Knowledge distillation (`distill:`): a student trains on a teacher's softened predictions as well as the labels.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss   (Hinton et al.)

The teacher is an hftl run dir (its adapter merged in memory), a local checkpoint folder or a Hub id; it runs in
eval mode without gradients on the student's device, on the same batches (so it must take the student's
inputs: the same tokenizer / image size). Its labels must be the data's, by name; their order may differ (the
teacher's logits are re-ordered). `student_from_teacher: {layers: [0, 2, 4]}` starts the student as a copy of
the teacher keeping only those blocks (DistilBERT's initialisation: every other layer).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hftl.data import batches, join_rows
from hftl.errors import HftlError
from hftl.hooks import build_layer_map
from hftl.runs.evaluate import input_rows
from hftl.runs.load import Run, load_model, read_run
from hftl.training.features.base import Feature

logger = logging.getLogger("hftl")
UNLABELED = -100  # the label of a transfer-set row: the task loss ignores it (as torch's cross_entropy does)


class Distillation:
    """The teacher and its term: alpha * T^2 * KL(teacher || student) on temperature-softened logits; the task
    loss keeps weight 1 - alpha."""

    def __init__(self, teacher, temperature: float, alpha: float, order: list[int] | None = None):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha, self.order = temperature, alpha, order
        self.task_weight = 1.0 - alpha
        self.cached: dict[bytes, torch.Tensor] | None = None  # example digest -> teacher logits (cache_logits)
        self.hits = self.misses = 0

    def teacher_logits(self, inputs: dict) -> torch.Tensor:
        with torch.no_grad():
            logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        return logits[..., self.order] if self.order is not None else logits

    @torch.no_grad()
    def cache_logits(self, dataset, collator, batch_size: int) -> None:
        """The teacher's logits for every training example, computed once (eval mode, no randomness used). They are
        found again by the example's inputs (its unpadded tensors), so any collator, order or padding serves them."""
        device = next(self.teacher.parameters()).device
        self.cached = {}
        for b in batches(dataset, collator, batch_size, device, shortest_first=True):
            for key, row in zip(example_keys(b.inputs), self.teacher_logits(b.inputs)):
                self.cached[key] = row.detach().cpu()
        logger.info("teacher logits of %d training examples cached", len(self.cached))

    def logits_for(self, inputs: dict, device) -> torch.Tensor:
        """The cached logits of a batch whose examples are all cached; else the teacher runs (a miss)."""
        if self.cached is not None:
            rows = [self.cached.get(k) for k in example_keys(inputs)]
            if all(r is not None for r in rows):
                self.hits += len(rows)
                return torch.stack(rows).to(device)
            self.misses += 1
        return self.teacher_logits(inputs)

    def __call__(self, model, inputs: dict, outputs) -> torch.Tensor:
        return self.alpha * kd_loss(outputs.logits, self.logits_for(inputs, outputs.logits.device), self.temperature)


def example_keys(batch: dict) -> list[bytes]:
    """One digest per example of a collated batch: its input tensors without padding (positions where the attention
    mask is 0), so the same example gives the same key whatever batch it was padded in."""
    mask = batch.get("attention_mask")
    names = sorted(k for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor))
    keys = []
    for i in range(len(batch[names[0]])):
        h = hashlib.blake2b(digest_size=16)
        keep = mask[i].bool().cpu() if mask is not None else None
        for name in names:
            row = batch[name][i].detach().cpu()
            if keep is not None and row.shape[:1] == keep.shape:
                row = row[keep]
            h.update(name.encode() + str(tuple(row.shape)).encode() + row.contiguous().numpy().tobytes())
        keys.append(h.digest())
    return keys


def check_teacher(term, train_ds, collator, num_labels: int, device) -> None:
    """The teacher runs on the student's batches: one of them, before training."""
    batch = collator([train_ds[i] for i in range(min(2, len(train_ds)))])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    try:
        logits = term.teacher_logits(batch)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise HftlError(f"Recipe key 'distill.teacher': the teacher cannot take the student's inputs "
                        f"({str(e).splitlines()[0]}); it needs the same tokenizer / image size as model.model_name_or_path.") from None
    if logits.shape[-1] != num_labels:
        raise HftlError(f"Recipe key 'distill.teacher': the teacher predicts {logits.shape[-1]} classes, the data has "
                        f"{num_labels}.")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over examples."""
    t = temperature
    s = F.log_softmax(student.float() / t, dim=-1).reshape(-1, student.shape[-1])
    p = F.log_softmax(teacher.float() / t, dim=-1).reshape(-1, teacher.shape[-1])
    return t * t * F.kl_div(s, p, log_target=True, reduction="batchmean")


def transfer_rows(recipe, task, label_names: list[str]):
    """`distill.unlabeled`: its rows in the training data's format, `labels` -100 (no label: the task loss skips
    them; a label column in the file is dropped, never trained on)."""
    raw = input_rows(Run(recipe.output_dir, recipe, task, label_names), recipe.distill.unlabeled,
                     "Recipe key 'distill.unlabeled':")
    label = recipe.data.label_column_name or task.label_column
    if label in raw.column_names:
        raw = raw.remove_columns(label)
    return raw.add_column("labels", [UNLABELED] * len(raw))


def load_teacher(section, task, model_section, data, label_names: list[str]):
    """(teacher model, logit order or None) for `distill.teacher`, its labels checked against the data's."""
    source = section.teacher
    path = Path(source).expanduser()
    if (path / "recipe.yaml").is_file():
        run = read_run(path)
        if run.task.name != task.name:
            raise HftlError(f"Recipe key 'distill.teacher': '{source}' is a {run.task.name} run; this recipe's task is "
                            f"{task.name}.")
        teacher = load_model(path)
        if hasattr(teacher, "merge_and_unload"):
            teacher = teacher.merge_and_unload()
        names = list(run.label_names)
    else:
        try:
            teacher = task.model_class(data).from_pretrained(
                source, revision=None, trust_remote_code=model_section.trust_remote_code, cache_dir=model_section.cache_dir)
        except (OSError, ValueError) as e:
            raise HftlError(f"Recipe key 'distill.teacher': cannot load '{source}': {str(e).splitlines()[0]}. Give an "
                            "hftl run dir, a local checkpoint folder or a Hub id.") from None
        id2label = getattr(teacher.config, "id2label", {}) or {}
        names = [id2label[i] for i in sorted(id2label)]
    if sorted(names) != sorted(label_names):
        raise HftlError(f"Recipe key 'distill.teacher': the teacher's labels {names} are not the data's {label_names}; "
                        "a teacher must predict the same classes (by name).")
    order = None if names == list(label_names) else [names.index(n) for n in label_names]
    return teacher, order


def truncate(teacher, keep: list[int]):
    """A copy of `teacher` with only the blocks `keep` (indices into its layer map's blocks) -- DistilBERT's
    student initialisation. The blocks must sit in one ModuleList; the config's layer count follows."""
    try:
        lm = build_layer_map(teacher)
    except ValueError as e:
        raise HftlError(f"Recipe key 'distill.student_from_teacher': {e}") from None
    parents = {b.rsplit(".", 1)[0] for b in lm.blocks}
    if len(parents) != 1:
        raise HftlError(f"Recipe key 'distill.student_from_teacher': the teacher's blocks are in {len(parents)} "
                        f"containers ({', '.join(sorted(parents))}); truncation needs one list of blocks.")
    n = len(lm.blocks)
    bad = [i for i in keep if not 0 <= i < n]
    if bad or len(set(keep)) != len(keep) or keep != sorted(keep):
        raise HftlError(f"Recipe key 'distill.student_from_teacher.layers': {keep} must be distinct block indices "
                        f"0..{n - 1}, in increasing order (the teacher has {n} blocks).")
    student = copy.deepcopy(teacher)
    parent = parents.pop()
    container = student.get_submodule(parent)
    if not isinstance(container, nn.ModuleList):
        raise HftlError(f"Recipe key 'distill.student_from_teacher': {parent} is a {type(container).__name__}, not a "
                        "ModuleList of blocks.")
    owner, _, attr = parent.rpartition(".")
    setattr(student.get_submodule(owner) if owner else student, attr, nn.ModuleList([container[i] for i in keep]))
    student.hftl_blocks_regex = re.escape(parent) + r"\.(\d+)\."  # the layer map finds one block too
    config = student.config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, key):
            setattr(config, key, len(keep))
            break
    for new_index, block in enumerate(student.get_submodule(parent)):  # attention layer indices (KV caches)
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    logger.info("student: the teacher's blocks %s of %d (%d -> %d parameters)", keep, n,
                sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters()))
    return student


class Distill(Feature):
    """`distill:` as a training block: the transfer set joins the training rows, the student may start as the
    teacher's own blocks, the KD term joins the loss (its teacher logits computed once where the inputs never
    change), and rows without a label teach through that term alone."""

    name = "distill"

    def __init__(self, section):
        self.section = section
        self.task_weight = 1.0 - section.alpha
        self.term: Distillation | None = None
        self.teacher = self.order = None
        self.cache_teacher = False
        self.smoothing = 0.0

    @classmethod
    def from_recipe(cls, recipe, task):
        return cls(recipe.distill) if recipe.distill is not None else None

    def add_rows(self, s) -> None:
        if self.section.unlabeled:
            rows = transfer_rows(s.recipe, s.task, s.splits.label_names)
            s.splits.train = join_rows(s.splits.train, rows, "distill.unlabeled")

    def model(self, s):
        self.teacher, self.order = load_teacher(self.section, s.task, s.recipe.model, s.recipe.data,
                                                s.splits.label_names)
        if self.section.student_from_teacher is None:
            return None
        if self.order is not None:
            raise HftlError("Recipe key 'distill.student_from_teacher': the teacher orders its labels differently "
                            "from the data; give the data the teacher's label order.")
        return truncate(self.teacher, self.section.student_from_teacher.layers)

    def prepared(self, s) -> None:
        self.term = Distillation(self.teacher.to(s.device), self.section.temperature, self.section.alpha, self.order)
        check_teacher(self.term, s.train_dataset, s.collator, len(s.splits.label_names), s.device)
        mode = self.section.cache_teacher
        self.cache_teacher = mode is True or (mode == "auto" and not s.inputs_vary)
        self.smoothing = s.args.label_smoothing_factor
        self.batch_size = s.args.per_device_eval_batch_size
        self.train_dataset, self.collator = s.train_dataset, s.collator

    def blocks_cache(self) -> str | None:
        return "distill runs the teacher on the real inputs"

    def before_train(self, s, resume: str | None) -> None:
        if self.cache_teacher:
            self.term.cache_logits(self.train_dataset, self.collator, self.batch_size)

    def task_loss(self, model, inputs: dict):
        labels = inputs.get("labels")
        if not self.section.unlabeled or labels is None or labels.ndim != 1:
            return None
        # rows without a label (distill.unlabeled): the task loss is the labelled rows' mean, 0 if there are none
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        labelled = (labels >= 0).sum().clamp_min(1)
        loss = F.cross_entropy(outputs.logits.float(), labels, ignore_index=UNLABELED, reduction="sum",
                               label_smoothing=self.smoothing) / labelled
        return loss, outputs

    def loss_term(self, model, inputs: dict, outputs):
        return self.term(model, inputs, outputs)

    def card_lines(self) -> list[str]:
        d = self.section
        start = f"; the student started as the teacher's blocks {d.student_from_teacher.layers}" if d.student_from_teacher else ""
        if d.unlabeled:
            start += f"; the unlabelled rows of `{d.unlabeled}` joined the training split, taught by the teacher alone"
        return [f"- Knowledge distillation from `{d.teacher}`: loss = {d.alpha} x T^2 x KL(teacher || student) "
                f"at T = {d.temperature} + {1 - d.alpha:g} x the task loss{start}."]
