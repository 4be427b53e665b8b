"""A run's validation set through several models at once (PyTorch, ONNX, INT8, pruned): each one's metrics, its
argmax agreement with the first and its largest logit difference from it; and what a model weighs."""

from __future__ import annotations

from hftl.data import batches, load_splits
from hftl.errors import HftlError
from hftl.runs.load import load_processor, prepare_eval

EVAL_BATCH = 32


def eval_set(run, model):
    """(eval dataset, collator): the run's validation split rebuilt from its recipe, preprocessed by its task."""
    processor = load_processor(run)
    splits = load_splits(run.recipe.data, run.recipe.seed, run.task)
    if len(splits.validation) == 0:
        raise HftlError(f"The validation set of '{run.path}' has no rows: there is nothing to check the export on.")
    eval_ds, collator = prepare_eval(run, splits.validation, processor, model)
    return eval_ds, collator, processor


def compare(run, eval_ds, collator, models: dict) -> dict:
    """One pass over the eval set with every model (name -> batch -> logits tensor): per model its metrics
    (the task's compute_metrics), its argmax agreement with the first model and its largest absolute logit
    difference from it (over labelled positions for per-token tasks)."""
    import numpy as np
    import torch
    from transformers import EvalPrediction
    from transformers.trainer_pt_utils import nested_concat

    task = run.task
    names = list(models)
    preds = dict.fromkeys(names)
    labels_all = None
    agree = dict.fromkeys(names, 0)
    diff = dict.fromkeys(names, 0.0)
    peak = 0.0
    count = 0
    with torch.no_grad():
        for b in batches(eval_ds, collator, EVAL_BATCH):
            batch, labels = b.inputs, b.labels
            mask = labels != -100
            ref = None
            for name in names:
                logits = models[name](batch).float()
                if ref is None:
                    ref = logits
                    peak = max(peak, float(ref[mask].abs().max()) if mask.any() else 0.0)
                agree[name] += int((logits.argmax(-1) == ref.argmax(-1))[mask].sum())
                diff[name] = max(diff[name], float((logits - ref)[mask].abs().max()) if mask.any() else 0.0)
                p = task.preprocess_logits_for_metrics(logits, labels) if task.preprocess_logits_for_metrics else logits
                preds[name] = p if preds[name] is None else nested_concat(preds[name], p, padding_index=-100)
            count += int(mask.sum())
            labels_all = labels if labels_all is None else nested_concat(labels_all, labels, padding_index=-100)
    metrics = task.metrics_for(run.label_names)
    out = {}
    for name in names:
        m = metrics(EvalPrediction(predictions=preds[name].numpy(), label_ids=labels_all.numpy()))
        out[name] = {"metrics": {k: float(v) for k, v in m.items() if isinstance(v, (int, float, np.floating))},
                     "agreement": agree[name] / max(count, 1), "max_abs_diff": diff[name]}
    out["_peak_logit"] = peak
    out["_examples"] = len(eval_ds)
    return out


def state_bytes(model) -> int:
    """Bytes of the model's state dict (what its safetensors file holds; shared tensors once)."""
    seen = {}
    for t in model.state_dict().values():
        seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
    return sum(seen.values())
