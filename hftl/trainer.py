"""`transformers.Trainer` with hftl's optimizer groups and the hooks that must run inside a step.

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
- metrics derived from the Trainer's own (perplexity from eval_loss) join every evaluation's logs;
- optional small-data regularizers: mixed training batches with their soft-target loss (`batch_transform`),
  evaluation on the weight average (`ema`), class probabilities averaged over flipped images (`eval_tta`);
- pluggable loss terms (`loss_terms`: distillation, ...) added to the task loss in training, each logged.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import Trainer

from transformers import TrainerCallback

from hftl.faults import check_loss
from hftl.hooks import param_groups


class PortableCheckpoints(TrainerCallback):
    """A checkpoint folder is a model too: mean/cls pooling ships with it (see hftl/pooling.py) and its files get
    the umask's ordinary mode (safetensors writes weights 0600)."""

    def on_save(self, args, state, control, model=None, **kwargs):
        from hftl.runs.outputs import fix_modes
        from hftl.pooling import make_portable

        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not (state.is_world_process_zero and ckpt.is_dir()):
            return
        if model is not None and (ckpt / "config.json").is_file() and not (ckpt / "adapter_config.json").is_file():
            make_portable(ckpt, model)
        fix_modes(ckpt)


class HftlTrainer(Trainer):
    def __init__(self, *args, plan=None, on_nan_loss: str = "stop", task=None, batch_transform=None,
                 eval_tta: list[str] | None = None, loss_terms: list | None = None, unlabelled_rows: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.on_nan_loss = on_nan_loss
        self.task = task
        self.batch_transform = batch_transform  # e.g. mixing.BatchMixer: training batches only
        self.eval_tta = list(eval_tta or [])
        self.ema = None  # ema.WeightEma, set by the pipeline once the model is on its device
        # Loss terms: objects with `name`, `task_weight` and `__call__(model, inputs, outputs) -> tensor`, e.g.
        # distill.Distillation; each adds to the (re-weighted) task loss and logs its own mean as loss_<name>.
        self.loss_terms = list(loss_terms or [])
        self.unlabelled_rows = unlabelled_rows  # training rows labelled -100 (distill.unlabeled): see compute_loss
        self._term_sums: dict[str, list] = {}
        self.skipped_steps = 0
        if task is None or not task.token_loss:
            self.model_accepts_loss_kwargs = False
        self.add_callback(PortableCheckpoints())

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.plan is None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        # The plan's learning rates, resolved once for the plan table and the optimizer alike.
        groups = param_groups(model, self.plan.lrs, self.args.weight_decay, set(self.get_decay_parameter_names(model)))
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def train(self, resume_from_checkpoint=None, **kwargs):
        if self.ema is not None and isinstance(resume_from_checkpoint, (str, Path)):
            self.ema.resume(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.batch_transform is not None:
            inputs = self.batch_transform(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.plan is not None:
            self.plan.trainable.after_backward()
        if not check_loss(loss, self.state.global_step + 1, Path(self.args.output_dir), self.on_nan_loss,
                          self.args.world_size):
            # Skip: drop this accumulation cycle's gradients; params with grad None are not updated.
            model.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return torch.zeros_like(loss)
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
            from hftl.runs.outputs import LR_PREFIX

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
        """The task loss (the model's own, or soft-target CE for mixed batches), then, in training, the loss
        terms: total = task loss x each term's task_weight + each term's value; every part is logged."""
        labels = inputs.get("labels")
        terms = self.loss_terms if model.training else []
        if self.unlabelled_rows and model.training and labels is not None and labels.ndim == 1:
            # rows without a label (distill.unlabeled): the task loss is the labelled rows' mean, 0 if there are none
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            labelled = (labels >= 0).sum().clamp_min(1)
            loss = torch.nn.functional.cross_entropy(
                outputs.logits.float(), labels, ignore_index=-100, reduction="sum",
                label_smoothing=self.args.label_smoothing_factor) / labelled
        elif labels is None or not labels.is_floating_point() or labels.ndim != 2:
            if not terms:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        else:
            # soft targets (mixup / cutmix): the model's own loss would read float labels as multi-label (BCE)
            from hftl.mixing import soft_target_loss

            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            loss = soft_target_loss(outputs.logits, labels)
        if terms:
            self._log_term("task", loss)
            total = loss
            for term in terms:
                value = term(model, inputs, outputs)
                self._log_term(term.name, value)
                total = total * term.task_weight + value
            loss = total
        return (loss, outputs) if return_outputs else loss

    def _log_term(self, name: str, value) -> None:
        sums = self._term_sums.setdefault(name, [0.0, 0])
        sums[0] += float(value.detach())
        sums[1] += 1

    def evaluate(self, *args, **kwargs):
        dev = self.args.device
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), (self.ema.swapped() if self.ema is not None else nullcontext()):
            return super().evaluate(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not self.eval_tta or "pixel_values" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        rest = {k: v for k, v in inputs.items() if k not in ("labels", "pixel_values")}
        x = inputs["pixel_values"]
        views = [x] + [x.flip(-1 if t == "hflip" else -2) for t in self.eval_tta]
        with torch.no_grad():
            probs = torch.stack([model(pixel_values=v, **rest).logits.float().softmax(-1) for v in views]).mean(0)
        logits = probs.clamp_min(1e-12).log()  # log of the averaged probabilities: argmax and loss follow them
        loss = torch.nn.functional.nll_loss(logits, labels) if labels is not None else None
        return (loss, None, None) if prediction_loss_only else (loss, logits, labels)
