"""`transformers.Trainer` with hftl's optimizer groups, the hooks that must run inside a step, and one seam for the
optional training blocks (training/features/).

The changes, each for a trap the plain Trainer has in transfer learning:
- the optimizer holds every parameter that may ever train (frozen ones too, grad None), grouped by
  depth with their own learning rates -- else layers unfrozen later never train;
- after backward, gradients of layers frozen under DDP are dropped (see hooks/unfreezing.py);
- a non-finite loss stops the run with the step and the last good checkpoint (or skips the step);
- evaluation leaves the random state as it found it -- else each DataLoader iterator it creates draws
  from the global RNG, and every later dropout mask (so the trained model) depends on eval_strategy;
- checkpoints load like the final model (pooling code shipped) and are readable as the umask says;
- classification losses ignore `num_items_in_batch`, so the Trainer must not treat the loss as
  already normalised (it would then skip the gradient-accumulation division and, with
  average_tokens_across_devices, multiply the loss by world_size); language-model losses
  (`Task.token_loss`) take it, so tokens weigh the same across accumulated micro-batches;
- a language model's eval_loss is the mean over tokens (`Task.loss_tokens`), not over batches, so it and the
  perplexity derived from it do not depend on the eval batch size;
- the last evaluation is kept (`last_evaluation`: its step, metrics and predictions), so a run that evaluated at
  its last step is not evaluated again to report its metrics.
- speed (training/speed.py): a batch of token sequences may run as length-sorted micro-batches, gradients summed
  and weighted so the update is the whole batch's; length-grouped batches (train_sampling_strategy) come in random
  order, and evaluation stays in the dataset's order.

The features (`features`, see features/base.py) plug in without being named here: they change training batches,
replace the task loss, add loss terms (each logged as loss_<name>, the task loss as loss_task), wrap evaluations,
replace evaluation predictions and add callbacks.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import has_length

from hftl.files import fix_modes
from hftl.hooks import param_groups
from hftl.model import make_portable
from hftl.runs.outputs import LR_PREFIX
from hftl.training.faults import check_loss
from hftl.training.features.base import overrides
from hftl.training.preflight import rng_kept
from hftl.training.speed import GROUPED, LengthGroupedBatches, averaged_items, sorted_chunks, token_lengths


class PortableCheckpoints(TrainerCallback):
    """A checkpoint folder is a model too: mean/cls pooling ships with it (see model/pooling.py) and its files get
    the umask's ordinary mode (safetensors writes weights 0600)."""

    def on_save(self, args, state, control, model=None, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not (state.is_world_process_zero and ckpt.is_dir()):
            return
        if model is not None and (ckpt / "config.json").is_file() and not (ckpt / "adapter_config.json").is_file():
            make_portable(ckpt, model)
        fix_modes(ckpt)


@dataclass
class Evaluation:
    """One evaluation of the Trainer's eval set: at which optimizer step, its metrics, and its predictions and
    labels (None when no logits were gathered: a language model's eval_loss alone)."""

    step: int
    metrics: dict
    predictions: Any = None
    label_ids: Any = None


class HftlTrainer(Trainer):
    def __init__(self, *args, plan=None, on_nan_loss: str = "stop", task=None, features=(), train_lengths=None,
                 micro_batch=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_lengths = train_lengths  # the token inputs' lengths, for batches on cached features too
        self.micro_batch = micro_batch  # length-sorted micro-batches of this size (training/speed.py)
        self._loss_weight = 1.0  # a micro-batch's share of its batch's loss
        self.plan = plan
        self.on_nan_loss = on_nan_loss
        self.task = task
        self.features = list(features)
        self._batch_hooks = [f for f in self.features if overrides(f, "transform_batch")]
        self._loss_hooks = [f for f in self.features if overrides(f, "task_loss")]
        self._terms = [f for f in self.features if overrides(f, "loss_term")]
        self._predictors = [f for f in self.features if overrides(f, "predict")]
        self._term_sums: dict[str, list] = {}
        self._token_sums: list | None = None
        self._last_output = None
        self.last_evaluation: Evaluation | None = None
        self.skipped_steps = 0
        if task is None or not task.token_loss:
            self.model_accepts_loss_kwargs = False
        self.add_callback(PortableCheckpoints())
        for f in self.features:  # after the Trainer placed the model on its device
            for callback in f.callbacks(self):
                self.add_callback(callback)

    def feature(self, name: str):
        """The run's feature called `name` (e.g. "distill", "ema"), or None."""
        return next((f for f in self.features if f.name == name), None)

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.plan is None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        # The plan's learning rates, resolved once for the plan table and the optimizer alike.
        groups = param_groups(model, self.plan.lrs, self.args.weight_decay, set(self.get_decay_parameter_names(model)))
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches in random order (training/speed.py), from the token lengths read in one go."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        lengths = None
        if self.args.train_sampling_strategy == GROUPED:
            lengths = token_lengths(dataset)
            if lengths is None and self.train_lengths is not None and len(self.train_lengths) == len(dataset):
                lengths = self.train_lengths  # cached features of the same examples, in the same order
        if lengths is None:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedBatches(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps)

    def _get_eval_sampler(self, eval_dataset):
        """Evaluation in the dataset's order, grouped training or not: the evaluation report pairs the last
        evaluation's predictions with the validation rows by position."""
        if self.args.train_sampling_strategy != GROUPED:
            return super()._get_eval_sampler(eval_dataset)
        if eval_dataset is None or not has_length(eval_dataset) or self.args.world_size > 1:
            return None  # as the Trainer does: no sampler, Accelerate shards in order
        return SequentialSampler(eval_dataset)

    def training_step(self, model, inputs, num_items_in_batch=None):
        for f in self._batch_hooks:
            inputs = f.transform_batch(inputs)
        chunks = sorted_chunks(inputs, self.micro_batch) if self.micro_batch else None
        if chunks is None:
            loss = super().training_step(model, inputs, num_items_in_batch)
        else:
            loss = self._micro_steps(model, chunks, num_items_in_batch)
        if self.plan is not None:
            self.plan.trainable.after_backward()
        if not check_loss(loss, self.state.global_step + 1, Path(self.args.output_dir), self.on_nan_loss,
                          self.args.world_size):
            # Skip: drop this accumulation cycle's gradients; params with grad None are not updated.
            model.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return torch.zeros_like(loss)
        return loss

    def _micro_steps(self, model, chunks, num_items_in_batch):
        """One batch as length-sorted micro-batches, gradients summed. A loss that is a mean over the batch is
        weighted by each micro-batch's share of what it averages (examples, or labelled tokens for per-token
        labels); one normalised by `num_items_in_batch` (a language model's tokens) already is. Gradients are
        all-reduced once, after the last micro-batch."""
        normalised = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        counts = [averaged_items(chunk, n) for chunk, n in chunks]
        loss = 0.0
        try:
            for i, (chunk, _) in enumerate(chunks):
                self._loss_weight = 1.0 if normalised else counts[i] / max(sum(counts), 1)
                last = i == len(chunks) - 1
                with nullcontext() if last or self.args.world_size <= 1 else self.accelerator.no_sync(model):
                    loss = loss + super().training_step(model, chunk, num_items_in_batch)
        finally:
            self._loss_weight = 1.0
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also carry each param group's learning rate (for curves.png and report_to), for the
        groups that train now: discriminative LRs as parallel lines, gradual unfreezing as lines that start."""
        if self.task is not None and any(k.startswith("eval_") for k in logs):
            self.task.finish_metrics(logs)  # in place: evaluate() returns this same dict
        if "loss" in logs and self._term_sums:  # each loss term's mean since the last log
            for name, (total, n) in self._term_sums.items():
                logs[f"loss_{name}"] = round(total / max(n, 1), 6)
            self._term_sums = {}
        if "loss" in logs and self.optimizer is not None and self.plan is not None and self._groups_differ():
            active = self.plan.trainable.active
            for group in self.optimizer.param_groups:
                if any(n in active for n in group.get("param_names", [])):
                    logs.setdefault(LR_PREFIX + str(group.get("name", "default")), group["lr"])
        super().log(logs, start_time)

    def _groups_differ(self) -> bool:
        """Per-group lines say something only with several learning rates or gradual unfreezing; otherwise
        the Trainer's own learning_rate is every group's (a LoRA run on 30 blocks would log 30 equal lines)."""
        return len({a.lr for a in self.plan.lrs.values()}) > 1 or bool(self.plan.callbacks)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The task loss (the model's own, or a feature's), then, in training, the features' loss terms:
        total = task loss x each term's task_weight + each term's value; every part is logged."""
        if self._loss_weight != 1.0 and model.training:  # a micro-batch: its share of the batch's loss
            weight, self._loss_weight = self._loss_weight, 1.0
            try:
                found = self.compute_loss(model, inputs, True, num_items_in_batch)
            finally:
                self._loss_weight = weight
            loss, outputs = found[0] * weight, found[1]
            return (loss, outputs) if return_outputs else loss
        if not model.training or not (self._loss_hooks or self._terms):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        found = next((r for f in self._loss_hooks if (r := f.task_loss(model, inputs)) is not None), None)
        loss, outputs = found if found is not None else super().compute_loss(model, inputs, True, num_items_in_batch)
        terms = [(f, f.loss_term(model, inputs, outputs)) for f in self._terms]
        terms = [(f, value) for f, value in terms if value is not None]
        if terms:
            self._log_term("task", loss)
            for f, value in terms:
                self._log_term(f.loss_name or f.name, value)
                loss = loss * f.task_weight + value
        return (loss, outputs) if return_outputs else loss

    def _log_term(self, name: str, value) -> None:
        sums = self._term_sums.setdefault(name, [0.0, 0])
        sums[0] += float(value.detach())
        sums[1] += 1

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval", **kwargs):
        with ExitStack() as stack:
            stack.enter_context(rng_kept(self.args.device))
            for f in self.features:
                stack.enter_context(f.evaluating())
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **kwargs)
        if eval_dataset is None and metric_key_prefix == "eval":
            out = self._last_output
            self.last_evaluation = Evaluation(self.state.global_step, metrics, getattr(out, "predictions", None),
                                              getattr(out, "label_ids", None))
        self._last_output = None
        return metrics

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._token_sums = [0.0, 0] if self.task is not None and self.task.token_loss else None
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        sums, self._token_sums = self._token_sums, None
        if sums is not None and sums[1]:
            total = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.args.device) for v in sums])
            if self.args.world_size > 1:
                total = self.accelerator.reduce(total, reduction="sum")
            output.metrics[f"{metric_key_prefix}_loss"] = float(total[0] / total[1])
        self._last_output = output
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        found = None
        if self._predictors:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                found = next((r for f in self._predictors if (r := f.predict(model, inputs)) is not None), None)
        if found is not None:
            loss, logits = found
            out = (loss, None, None) if prediction_loss_only else (loss, logits, inputs.get("labels"))
        else:
            out = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if self._token_sums is not None and out[0] is not None and inputs.get("labels") is not None:
            n = self.task.loss_tokens(inputs["labels"])
            if n is None:
                self._token_sums = None
            else:  # the batch's loss is its tokens' mean: weigh it by their number
                self._token_sums[0] = self._token_sums[0] + out[0].detach().double() * n
                self._token_sums[1] += n
        return out
