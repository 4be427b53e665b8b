"""The pre-flight step: an incompatibility found only by running the model is a recipe error before training,
and the step leaves no trace (the run is bit-identical to one without it)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

import hftl
from hftl.training import preflight
from hftl.training import setup as training_setup

FAST = {"num_train_epochs": 1, "learning_rate": 1e-2}
TEXT_DATA = {"max_train_samples": 32, "max_eval_samples": 16}


def too_many_virtual_tokens(text_recipe):
    # The tiny BERT has 64 positions: 60 virtual tokens + up to 16 text tokens do not fit. Only running the
    # model shows it (the position-embedding lookup fails), and PEFT accepts the config.
    return text_recipe(training=FAST, data=TEXT_DATA, peft={"method": "prompt_tuning", "num_virtual_tokens": 60})


def test_incompatible_peft_config_is_a_recipe_error_before_training(text_recipe):
    recipe = too_many_virtual_tokens(text_recipe)
    with pytest.raises(hftl.HftlError) as err:
        hftl.train(recipe)
    msg = str(err.value)
    assert msg.startswith("Recipe key 'peft.method': prompt_tuning cannot train BertForSequenceClassification")
    assert "first training step fails" in msg and "Try " in msg and "\n" not in msg
    assert not hftl.load_recipe(recipe).output_dir.exists()


def test_plan_runs_the_preflight_and_validate_does_not(text_recipe, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(too_many_virtual_tokens(text_recipe)))
    env_run = dict(capture_output=True, text=True, timeout=300)
    plan = subprocess.run([sys.executable, "-m", "hftl.cli", "plan", str(path)], **env_run)
    assert plan.returncode == 1 and "'peft.method': prompt_tuning cannot train" in plan.stderr
    assert "Traceback" not in plan.stderr
    validate = subprocess.run([sys.executable, "-m", "hftl.cli", "validate", str(path)], **env_run)
    assert validate.returncode == 0, validate.stderr  # model-free: the recipe itself is fine


@pytest.mark.parametrize("kind", ["text", "image-batchnorm"])
def test_preflight_leaves_the_run_bit_identical(kind, text_recipe, image_recipe, resnet_dir, monkeypatch):
    """BatchNorm updates its statistics in a training forward: without restoring the buffers every later step
    would differ (ResNet). Dropout draws from the RNG (BERT); the Trainer reseeds when it is built, so the RNG
    side is checked directly in the next test."""
    if kind == "text":
        recipe = text_recipe(training={**FAST, "save_strategy": "no"}, data=TEXT_DATA)
    else:
        recipe = image_recipe(model_dir=resnet_dir, training={**FAST, "save_strategy": "no"},
                              data={"max_train_samples": 16, "max_eval_samples": 8})
    calls = []
    real = preflight.check_first_step
    monkeypatch.setattr(training_setup, "check_first_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    with_check = hftl.train(recipe, overrides=["overwrite_output_dir=true"]).model.state_dict()
    assert calls, "the pre-flight did not run"
    monkeypatch.setattr(training_setup, "check_first_step", lambda *a, **k: None)
    without = hftl.train(recipe, overrides=["overwrite_output_dir=true"]).model.state_dict()
    assert with_check.keys() == without.keys()
    for name in with_check:
        assert torch.equal(with_check[name], without[name]), name


def test_preflight_drops_its_gradients_and_restores_modes(text_recipe):
    from hftl.training.setup import setup

    s = setup(hftl.load_recipe(text_recipe(data=TEXT_DATA)))
    assert all(p.grad is None for p in s.model.parameters())
    s.model.eval()
    before = {n: b.clone() for n, b in s.model.named_buffers()}
    rng = torch.get_rng_state()
    preflight.check_first_step(s.model, s.train_dataset, s.collator, s.recipe)
    # The tiny BERT's dropout drew from the global RNG inside the step; the state is the one before it.
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in s.model.parameters())
    assert not any(m.training for m in s.model.modules())
    assert all(torch.equal(b, before[n]) for n, b in s.model.named_buffers())
