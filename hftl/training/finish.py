"""What a finished training run leaves in its output dir, written through runs/: the model (or adapter), the
resolved recipe, metrics, curves, plan, labels, the evaluation report and the model card."""

from __future__ import annotations

import logging

import numpy as np
import torch

from hftl.files import fix_modes, write_json, write_text
from hftl.model import adapter_summary, make_portable, pooling_of
from hftl.recipe import Recipe
from hftl.recipe.training import sharded
from hftl.runs import card
from hftl.runs.evaluate import Scored, score_prepared, shown_inputs, write_report
from hftl.runs.export import merge_adapter
from hftl.runs.hub import base_model_id
from hftl.runs.load import read_run
from hftl.runs.outputs import plot_curves
from hftl.tasks import Task

logger = logging.getLogger("hftl")


def write_outputs(s, trainer, metrics: dict, scored: Scored | None = None) -> None:
    out = s.recipe.output_dir
    trainer.save_model(str(out))  # adapter (+ head) for PEFT runs, the full model otherwise; safetensors
    if s.recipe.peft is None:
        make_portable(out, s.model)  # mean/cls pooling: config.json + the code plain transformers needs
    adapter = adapter_summary(s.model) if s.recipe.peft is not None else None
    table = s.plan.table()
    write_text(out / "recipe.yaml", _resolved(s.recipe, s.model).to_yaml())
    write_json(out / "metrics.json", metrics)
    write_text(out / "plan.md", table + "\n")
    if s.splits.label_names:
        write_json(out / "labels.json", s.splits.label_names)
    plot_curves(trainer.state.log_history, out / "curves.png", f"{s.recipe.task}: {s.recipe.model.source}",
                s.task.metric_names)
    merged = s.recipe.peft is not None and s.recipe.peft.merge
    usage = card.usage_snippet(s.recipe, s.task, s.splits.label_names, pooling_of(s.model), adapter is not None, merged)
    text = card.model_card(
        s.recipe, s.task, metrics, table, s.task.describe_preprocessing(s.processor, s.recipe.data), s.splits.label_names,
        adapter, len(s.train_dataset), len(s.eval_dataset), usage, base_model_id(s.recipe), trainer.state.log_history,
        _evaluation_report(s, metrics, scored), _reports(s, trainer))
    write_text(out / "README.md", text)
    if merged:
        # last, so that a failed merge still leaves a complete, loadable adapter run
        merge_adapter(s.model, s.processor, out / "merged")
    fix_modes(out)
    logger.info("outputs written to %s", out)


def _reports(s, trainer) -> list[str]:
    """Card lines: the blocks that ran (a "Regularization" list), the task's own outputs after training (sampled
    completions) and the features' reports; their files go into the output dir."""
    notes = [line for f in s.features for line in f.card_lines()]
    lines = ["", "## Regularization", "", *notes] if notes else []
    model = trainer.accelerator.unwrap_model(trainer.model)
    task_lines, files = s.task.report(model, s.processor, s.recipe.data, s.recipe.generation)
    for name, text in files.items():
        write_text(s.recipe.output_dir / name, text)
    lines += task_lines
    for f in s.features:
        lines += f.report(s.recipe.output_dir)
    return lines


def eval_scores(s, trainer) -> Scored | None:
    """The trained model's class probabilities on the evaluation set, for eval/ and the card: the Trainer's last
    evaluation when it was at the last step and gathered logits the task reads directly; otherwise one pass over
    the Trainer's own evaluation set (cached features where the run has them). None without labels, or where the
    parameters are sharded across ranks (FSDP, ZeRO-3: this rank alone cannot run the model)."""
    if not s.splits.label_names:
        return None
    shown = shown_inputs(s.splits.validation, s.task.input_column(s.recipe.data))
    last = trainer.last_evaluation
    if (last is not None and last.step == trainer.state.global_step and last.predictions is not None
            and last.label_ids is not None and not isinstance(last.predictions, tuple)
            and s.task.preprocess_logits_for_metrics is None and type(s.task).probabilities is Task.probabilities
            and len(last.predictions) == len(shown)):
        probs = s.task.probabilities(torch.as_tensor(np.asarray(last.predictions)), [])
        return Scored(probs, list(np.asarray(last.label_ids)), shown)
    if sharded(s.recipe.training):
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    scored = score_prepared(s.task, model.eval(), trainer.eval_dataset, trainer.data_collator, shown,
                            s.args.per_device_eval_batch_size)
    model.train(was_training)
    return scored


def _evaluation_report(s, metrics: dict, scored: Scored | None) -> dict | None:
    """eval/ (per-class table, confusion matrix, worst examples) from `eval_scores`, for the card."""
    if scored is None:
        return None
    run = read_run(s.recipe.output_dir)
    keys = [k for k in metrics if k.startswith("eval_")]
    return write_report(s.recipe.output_dir / "eval", run, scored, {k: metrics[k] for k in keys}, "validation split")


def _resolved(recipe: Recipe, model) -> Recipe:
    """The recipe as it ran: model.pooling 'auto' becomes the pooling it resolved to."""
    return recipe.model_copy(update={"model": recipe.model.model_copy(update={"pooling": pooling_of(model)})})
