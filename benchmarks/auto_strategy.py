"""`strategy.preset: auto` against every fixed strategy, on every real classification task of the zoo.

The auto rows are trained by the task's own quality script (same base recipe, same seed, same split as its fixed
rows), so each auto number sits in that script's table beside the fixed strategies:

    .venv/bin/python benchmarks/quality_text.py --only auto
    .venv/bin/python benchmarks/quality_image.py --only auto
    .venv/bin/python benchmarks/quality_stamps.py --seeds 0 --only auto
    .venv/bin/python benchmarks/quality_audio.py --only auto

This script then recomputes what auto decided for each task (the evidence: ~1 min on 2 cores, no training) and
writes the comparison to results/auto_strategy.md (numbers: .json). Goals (issue 14): auto never below plain
full fine-tuning, and within 1 point of the best fixed strategy.

    .venv/bin/python benchmarks/auto_strategy.py
"""

from __future__ import annotations

import json
import statistics

from common import RESULTS, md_table, merge, write_result

import quality_audio
import quality_image
import quality_stamps
import quality_text

AUTO = {"strategy": {"preset": "auto"}}
LANGUAGE = quality_audio.DATASETS["language"]

# (task, results file, how its rows are keyed, the auto recipe, {row key: label} of the fixed strategies, plain full)
TASKS = [
    ("tweets, all-MiniLM-L6-v2 (text)", "quality_text", "",
     merge(quality_text.BASE, next(c for k, _, c, _ in quality_text.VARIANTS if k == "auto")),
     {"feature_extraction": "feature extraction, head lr 1e-3", "feature_extraction_head_lr_1e-2": "feature extraction, head lr 1e-2",
      "full": "full fine-tuning", "discriminative_gradual": "discriminative LR + gradual unfreezing", "lora": "LoRA r=8"},
     "full"),
    ("Fashion-MNIST 1k, EfficientNet-Lite0 96 px (image)", "quality_image", "", merge(quality_image.BASE, AUTO),
     {"feature_extraction": "feature extraction, head lr 3e-3", "feature_extraction_head_lr_1e-2": "feature extraction, head lr 1e-2",
      "full_bn_train": "full fine-tuning", "full_bn_frozen": "full fine-tuning, BatchNorm frozen",
      "discriminative_gradual": "discriminative LR + gradual unfreezing", "lora": "LoRA r=8"},
     "full_bn_train"),
    ("stamps, EfficientNet-Lite0 128 px (image)", "quality_stamps", "/seed", merge(quality_stamps.BASE, AUTO),
     {"feature_extraction": "feature extraction, head lr 3e-3", "partial": "partial fine-tuning (top 4 blocks)",
      "full": "full fine-tuning"},
     "full"),
    ("spoken-language, EfficientNet-Lite0 on log-mel (audio)", "quality_audio", "language/",
     merge(merge(quality_audio.BASE, {"data": {"dataset_name": LANGUAGE["dataset_name"],
                                               "max_duration_seconds": LANGUAGE["max_duration_seconds"]},
                                      "training": {"num_train_epochs": LANGUAGE["epochs"]}}), AUTO),
     {"feature_extraction": "feature extraction, head lr 3e-3", "full": "full fine-tuning",
      "discriminative": "discriminative LR (decay 0.7)"},
     "full"),
]


def accuracy(rows: dict, keying: str, key: str) -> float | None:
    """A row's accuracy; the stamps rows are per seed (mean over the seeds measured)."""
    if keying == "/seed":
        values = [v["accuracy"] for k, v in rows.items() if k.startswith(key + "/seed")]
        return statistics.mean(values) if values else None
    row = rows.get(keying + key)
    return row["accuracy"] if row else None


def decision_for(recipe: dict):
    from hftl.training.setup import setup
    from hftl.recipe import load_recipe

    recipe = merge(recipe, {"training": {"output_dir": "/tmp/hftl-auto-decision"}})
    return setup(load_recipe(recipe)).plan.decision


def main():
    table, numbers = [], {}
    for name, results, keying, recipe, fixed, full in TASKS:
        decision = decision_for(recipe)
        rows = json.loads((RESULTS / f"{results}.json").read_text())
        auto = accuracy(rows, keying, "auto")
        scores = {label: accuracy(rows, keying, key) for key, label in fixed.items()}
        scores = {k: v for k, v in scores.items() if v is not None}
        best = max(scores, key=scores.get)
        plain = scores[fixed[full]]
        e = decision.evidence
        evidence = (f"{e['per_class_median']:g} / class, probe {e['probe_balanced_accuracy']:.2f}"
                    + (f", BN KL {e['bn_shift']:.2f}" if e["bn_shift"] is not None else "")
                    + (f", {e['pieces_per_word']:.2f} pieces / word" if e["pieces_per_word"] is not None else ""))
        table.append([name, evidence, decision.choice, "not run" if auto is None else auto, plain,
                      f"{scores[best]:.3f} ({best})",
                      "-" if auto is None else f"{100 * (auto - plain):+.1f}",
                      "-" if auto is None else f"{100 * (auto - scores[best]):+.1f}"])
        numbers[name] = {"decision": decision.to_dict(), "auto": auto, "fixed": scores, "best": best, "full": plain}
    (RESULTS / "auto_strategy.json").write_text(json.dumps(numbers, indent=1) + "\n")
    body = md_table(["task", "evidence (training split)", "auto chose", "auto accuracy", "plain full FT",
                     "best fixed strategy", "auto - full (points)", "auto - best (points)"], table)
    body += """

Goals: auto never below plain full fine-tuning, within 1 point of the best fixed strategy. The accuracies are the
validation (published test) rows of each task's quality script; the fixed rows were measured by earlier runs of
those scripts (same recipe, seed and split), the auto rows by `--only auto`. The evidence is computed on the
training split only (hftl/strategy/auto.py: median examples per class, the balanced accuracy of a linear probe on
the frozen features, the BatchNorm inputs' Gaussian KL from the running statistics, tokenizer pieces per word)."""
    write_result("auto_strategy", "strategy.preset: auto vs the fixed strategies", body)


if __name__ == "__main__":
    main()
