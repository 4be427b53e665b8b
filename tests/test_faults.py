"""Faults: NaN losses, signals, partial checkpoints, resume after SIGKILL, sharding combinations refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

import hftl
from hftl.errors import HftlError, RecipeError
from hftl.training.faults import last_good_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class NanAt(TrainerCallback):
    """Make the head output NaN for the forward passes of one optimizer step."""

    def __init__(self, step: int):
        self.step, self.active, self.handle = step, False, None

    def on_train_begin(self, args, state, control, model=None, **kw):
        def hook(module, inputs, output):
            return output * float("nan") if self.active else output

        self.handle = model.classifier.register_forward_hook(hook)

    def on_step_begin(self, args, state, control, **kw):
        self.active = state.global_step + 1 == self.step

    def on_train_end(self, *a, **kw):
        self.handle.remove()


def test_nan_loss_stops_with_step_and_last_checkpoint(text_recipe):
    recipe = text_recipe(training={"save_strategy": "steps", "save_steps": 3, "num_train_epochs": 1})
    with pytest.raises(HftlError, match=r"became nan at optimizer step 5\. Last good checkpoint: .*checkpoint-3"):
        hftl.train(recipe, callbacks=[NanAt(5)])


def test_nan_loss_skip_policy_skips_only_that_step(text_recipe):
    r = hftl.train(text_recipe(on_nan_loss="skip", training={"num_train_epochs": 3}), callbacks=[NanAt(5)])
    assert r.trainer.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in r.model.parameters())
    assert r.metrics["eval_accuracy"] >= 0.9


def test_partial_checkpoint_is_skipped_and_named(text_recipe, tmp_path):
    recipe = text_recipe(training={"save_strategy": "epoch", "save_total_limit": None, "num_train_epochs": 2})
    hftl.train(recipe)
    out = tmp_path / "out"
    good = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    broken = out / "checkpoint-999"  # a save cut short: weights half-written, no trainer_state.json
    shutil.copytree(good[-1], broken)
    (broken / "trainer_state.json").unlink()
    assert last_good_checkpoint(out) == good[-1]
    torn = out / "checkpoint-1000"
    shutil.copytree(good[-1], torn)
    data = (torn / "model.safetensors").read_bytes()
    (torn / "model.safetensors").write_bytes(data[:100])
    assert last_good_checkpoint(out) == good[-1]
    with pytest.raises(HftlError, match="not a complete checkpoint.*truncated or corrupt"):
        hftl.train({**recipe, "training": {**recipe["training"], "resume_from_checkpoint": str(torn)}})
    with pytest.raises(HftlError, match="resume_from_checkpoint.*not a checkpoint folder"):
        hftl.train({**recipe, "training": {**recipe["training"], "resume_from_checkpoint": str(tmp_path / "nowhere")}})


def test_zero3_with_gradual_unfreezing_is_refused(text_recipe, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}))
    with pytest.raises(RecipeError, match="ZeRO-3"):
        hftl.load_recipe(text_recipe(strategy={"gradual_unfreezing": {"every_epochs": 1}},
                                     training={"deepspeed": str(ds)}))


# ------------------------------------------------------------------------------------------ real processes

def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", HFTL_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _train_cmd(recipe_path, *overrides):
    return [sys.executable, "-m", "hftl.cli", "train", str(recipe_path), *overrides]


def _wait_for(predicate, proc, timeout=180):
    start = time.time()
    while not predicate():
        assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else "process ended early"
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.05)


def _weights(out: Path) -> dict:
    f = out / "adapter_model.safetensors"
    return load_file(f if f.exists() else out / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["full", "lora", "gradual"])
def test_resume_after_sigkill_matches_uninterrupted_run(text_recipe, tmp_path, variant):
    extra = {"full": {}, "lora": {"peft": {"method": "lora", "r": 4, "lora_alpha": 8}},
             "gradual": {"strategy": {"gradual_unfreezing": {"every_epochs": 1}}}}[variant]
    training = {"num_train_epochs": 3, "save_strategy": "steps", "save_steps": 4, "save_total_limit": None,
                "eval_strategy": "no", "weight_decay": 0.1}
    # uninterrupted reference: same command and environment (thread count changes float summation order)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(text_recipe(**extra, training=training)))
    ref = subprocess.run(_train_cmd(path, f"training.output_dir={tmp_path / 'ref'}"), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = _weights(tmp_path / "ref")

    run = tmp_path / "run"
    path.write_text(yaml.safe_dump(text_recipe(**extra, training={**training, "output_dir": str(run)})))
    proc = subprocess.Popen(_train_cmd(path), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # kill in the middle of epoch 1 (12 steps per epoch), once checkpoint-16 is completely written
    _wait_for(lambda: (run / "checkpoint-16" / "trainer_state.json").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()
    done = subprocess.run(_train_cmd(path, "training.resume_from_checkpoint=true"), env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = _weights(run)
    assert set(got) == set(expected)
    for k in expected:
        assert torch.allclose(got[k], expected[k], atol=1e-6), k


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(text_recipe, tmp_path):
    recipe = text_recipe(training={"num_train_epochs": 50, "save_strategy": "epoch", "eval_strategy": "no"})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    proc = subprocess.Popen(_train_cmd(path), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "checkpoint-12" / "trainer_state.json").exists(), proc)  # one epoch done
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "resume_from_checkpoint" in stderr and "Traceback" not in stderr
    last = last_good_checkpoint(out)
    assert last is not None and int(last.name.split("-")[1]) > 12  # saved at the step it stopped
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == int(last.name.split("-")[1])
