"""The model card is the Hub's own format: huggingface_hub parses it, and its metadata is right."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

import hftl

FAST = {"num_train_epochs": 2, "learning_rate": 1e-2}
DATA = {"max_train_samples": 32, "max_eval_samples": 16}


@pytest.mark.parametrize("kind", ["full", "adapter"])
def test_card_metadata_and_eval_results(kind, text_recipe):
    peft = {"method": "lora"} if kind == "adapter" else None
    recipe = text_recipe(training=FAST, data=DATA, peft=peft, hub={"base_model": "google-bert/tiny-bert"})
    out = hftl.train(recipe).output_dir
    card = ModelCard.load(out / "README.md")
    metrics = json.loads((out / "metrics.json").read_text())
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.library_name == ("peft" if peft else "transformers")
    assert card.data.base_model == "google-bert/tiny-bert"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"accuracy": round(metrics["eval_accuracy"], 4), "f1_macro": round(metrics["eval_f1_macro"], 4)}
    assert all(r.task_type == "text-classification" and r.dataset_split == "validation" for r in card.data.eval_results)
    assert "hftl" in card.data.tags and (peft is None or "lora" in card.data.tags)
    for section in ("## Data", "## Results", "Per evaluation:", "## How to use", "## Transfer strategy",
                    "## Framework versions", "- transformers "):
        assert section in card.text, section


def test_card_of_a_local_base_says_how_to_name_it(text_recipe):
    out = hftl.train(text_recipe(training={"num_train_epochs": 1}, data=DATA)).output_dir
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None
    assert "set hub.base_model" in card.text
    assert str(text_recipe()["model"]["model_name_or_path"]) not in card.content  # no path of this disk


def test_logs_carry_each_groups_learning_rate_and_the_curves_plot_them(text_recipe):
    """Discriminative LR: parallel lines (a constant ratio between depths); gradual unfreezing: a group's line
    starts when its depth unfreezes. The same numbers reach report_to through the Trainer's logs."""
    from hftl.runs.outputs import LR_PREFIX, curves

    recipe = text_recipe(training={"num_train_epochs": 2, "learning_rate": 1e-2, "logging_steps": 1},
                         data=DATA, strategy={"discriminative_lr": {"layer_decay": 0.5},
                                              "gradual_unfreezing": {"every_steps": 3}})
    result = hftl.train(recipe)
    logs = [e for e in result.trainer.state.log_history if "loss" in e]
    lm = result.plan.layer_map
    head, top_block = lm.labels[lm.head_depth], lm.labels[lm.head_depth - 2]
    assert all(LR_PREFIX + head in e for e in logs)  # the head trains from step 0
    started = min(e["step"] for e in logs if LR_PREFIX + top_block in e)
    assert started > 1 and all(LR_PREFIX + top_block not in e for e in logs if e["step"] < started)
    for e in logs:
        if LR_PREFIX + top_block in e:  # head depth L+2, top block L: decay ** 2 below the head, at every step
            assert e[LR_PREFIX + top_block] == pytest.approx(e[LR_PREFIX + head] * 0.5 ** 2)
    c = curves(result.trainer.state.log_history)
    assert [s for s, _ in c["train"]] == [e["step"] for e in logs]  # every logging step, not one point per epoch
    assert len(c["eval"]) == 2 and set(c["lr"]) >= {head, top_block}
    assert (result.output_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
