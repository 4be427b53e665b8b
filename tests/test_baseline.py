"""`training.num_train_epochs: 0` scores a model as it is, for every task: no optimizer step, and a complete run dir
(model, metrics, card, plan) whose numbers are the loaded model's own -- the zero-shot or base-model baseline."""

from __future__ import annotations

import json
import math

import pytest
import torch

import hftl
from conftest import merge_sections
from test_audio import audio_recipe
from test_token_classification import ner_bert_dir, ner_files  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")
NO_TRAINING = {"num_train_epochs": 0, "save_strategy": "no", "per_device_eval_batch_size": 8,
               "dataloader_num_workers": 0}


@pytest.fixture
def baseline_recipes(bert_dir, vit_dir, w2v_dir, gpt2_lm_dir, t5_dir, ner_bert_dir, ner_files, text_csv,  # noqa: F811
                     image_dirs, audio_dirs, lm_files, tmp_path):
    out = {"training": {**NO_TRAINING, "output_dir": str(tmp_path / "out")}, "seed": 0}
    return {
        "text-classification": {"task": "text-classification", "model": {"model_name_or_path": str(bert_dir)},
                                "data": {"train_file": str(text_csv[0]), "validation_file": str(text_csv[1])}},
        "image-classification": {"task": "image-classification", "model": {"model_name_or_path": str(vit_dir)},
                                 "data": {"train_dir": str(image_dirs[0]), "validation_dir": str(image_dirs[1])}},
        "audio-classification": audio_recipe(w2v_dir, audio_dirs, tmp_path),
        "token-classification": {"task": "token-classification", "model": {"model_name_or_path": str(ner_bert_dir)},
                                 "data": {"train_file": str(ner_files[0]), "validation_file": str(ner_files[1])}},
        "causal-lm": {"task": "causal-lm", "model": {"model_name_or_path": str(gpt2_lm_dir)},
                      "data": {"train_file": str(lm_files["qa"]), "max_seq_length": 32}},
        "seq2seq": {"task": "seq2seq", "model": {"model_name_or_path": str(t5_dir)},
                    "data": {"train_file": str(lm_files["copy_train"]), "validation_file": str(lm_files["copy_validation"]),
                             "max_source_length": 16, "max_target_length": 8}},
    }, out


@pytest.mark.parametrize("task", ["text-classification", "image-classification", "audio-classification",
                                  "token-classification", "causal-lm", "seq2seq"])
def test_zero_epochs_scores_the_model_as_it_is(task, baseline_recipes):
    recipes, common = baseline_recipes
    recipe = merge_sections(recipes[task], common)
    recipe["training"] = {**recipes[task].get("training", {}), **common["training"]}
    r = hftl.train(recipe)
    assert r.trainer.state.global_step == 0
    out = r.output_dir
    for name in ("recipe.yaml", "metrics.json", "plan.md", "README.md", "curves.png", "config.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert "eval_loss" in saved and saved["eval_loss"] == pytest.approx(r.metrics["eval_loss"])
    assert "no training step" in (out / "README.md").read_text()
    # the saved weights are the model as it was loaded (and seeded, for a new head)
    reloaded = hftl.load_model(out).state_dict()
    assert all(torch.equal(v, reloaded[k]) for k, v in r.model.state_dict().items() if k in reloaded)
    if task == "causal-lm":  # the base model's own perplexity, nothing trained
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(recipe["model"]["model_name_or_path"]).state_dict()
        assert all(torch.equal(v, base[k]) for k, v in r.model.state_dict().items())
        assert saved["eval_perplexity"] == pytest.approx(math.exp(saved["eval_loss"]), rel=1e-6)
