"""Small-data regularizers: augmentation policies and random erasing, mixup / cutmix with soft targets, label
smoothing, the weight EMA (hand-computed, resumed, under DDP) and test-time augmentation at evaluation."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, child_env
from hftl.errors import HftlError
from hftl.errors import RecipeError


def _setup(recipe: dict):
    from hftl.training.setup import setup
    from hftl.recipe import load_recipe

    return setup(load_recipe(recipe))


# ----------------------------------------------------------------------------------------------- augmentation


def test_policy_and_random_erasing_act_on_training_images_only(image_recipe):
    s = _setup(image_recipe(data={"augment": {"random_resized_crop": False, "horizontal_flip": False,
                                              "policy": "rand-m9-mstd0.5", "random_erasing": 1.0}}))
    a, b = s.train_dataset[0]["pixel_values"], s.train_dataset[0]["pixel_values"]
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)  # drawn anew at every access
    plain = _setup(image_recipe(data={"augment": False}))
    assert torch.equal(plain.train_dataset[0]["pixel_values"], plain.train_dataset[0]["pixel_values"])
    assert torch.equal(s.eval_dataset[0]["pixel_values"], plain.eval_dataset[0]["pixel_values"])  # eval untouched
    described = s.task.describe_preprocessing(s.processor, s.recipe.data)
    assert "policy=rand-m9-mstd0.5" in described and "random_erasing=1.0" in described
    assert s.cache is None  # random transforms: no cached features


@pytest.mark.parametrize("policy", ["augmix-m5-w3", "original", "v0", "3a", "trivial", "rand-m10-n3-mstd0.5-inc1"])
def test_every_policy_family_builds_and_runs(policy):
    """timm's increasing posterize keeps 0 bits at magnitude 10, which Pillow refuses: hftl keeps 1."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2 as T

    from hftl.recipe import AugmentSection
    from hftl.tasks.image_classification import Preprocessing, train_transforms

    tf = train_transforms(Preprocessing((32, 32), (32, 32), (0.5,) * 3, (0.5,) * 3, T.InterpolationMode.BILINEAR),
                          AugmentSection(policy=policy))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    for _ in range(100):
        assert tf(image).shape == (3, 32, 32)


def test_unknown_policy_is_a_recipe_error(image_recipe):
    from hftl.recipe import load_recipe

    with pytest.raises(RecipeError, match=r"data.augment.policy.*'randaugment' is not an augmentation policy.*trivial"):
        load_recipe(image_recipe(data={"augment": {"policy": "randaugment"}}))


# ----------------------------------------------------------------------------------------------- mixup / smoothing


def test_mixup_changes_the_targets_the_loss_sees(image_recipe, monkeypatch):
    import hftl
    from hftl.training.trainer import HftlTrainer

    seen = []
    original = HftlTrainer.compute_loss

    def spy(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = original(self, model, inputs, True, num_items_in_batch)
        seen.append((model.training, inputs["labels"].detach().clone(), outputs.logits.detach(), loss.detach()))
        return (loss, outputs) if return_outputs else loss

    monkeypatch.setattr(HftlTrainer, "compute_loss", spy)
    r = hftl.train(image_recipe(regularization={"mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.1},
                                training={"num_train_epochs": 1}))
    train = [x for x in seen if x[0]]
    evals = [x for x in seen if not x[0]]
    assert train and evals
    for _, labels, logits, loss in train:
        assert labels.is_floating_point() and labels.shape == (len(labels), 2)
        assert torch.allclose(labels.sum(-1), torch.ones(len(labels)))
        hand = -(labels * torch.log_softmax(logits.float(), -1)).sum(-1).mean()  # soft-target cross-entropy
        assert torch.allclose(loss, hand, atol=1e-6)
    mixed = torch.cat([labels for _, labels, _, _ in train])
    assert ((mixed > 0.06) & (mixed < 0.94)).any()  # mixed pairs, not only smoothed one-hots (0.05 / 0.95)
    assert all(not labels.is_floating_point() for _, labels, _, _ in evals)  # evaluation is never mixed
    assert r.trainer.args.label_smoothing_factor == 0.0  # smoothing went into the mixed targets, not twice
    assert "Mixed training batches (timm Mixup)" in (r.output_dir / "README.md").read_text()


def test_label_smoothing_without_mixup_is_the_trainers_own(image_recipe):
    s = _setup(image_recipe(regularization={"label_smoothing": 0.1}))
    assert s.args.label_smoothing_factor == 0.1
    with pytest.raises(RecipeError, match="say the same thing"):
        _setup(image_recipe(regularization={"label_smoothing": 0.1}, training={"label_smoothing_factor": 0.2}))


def test_mixup_is_for_images_only(text_recipe):
    from hftl.recipe import load_recipe

    with pytest.raises(RecipeError, match=r"'regularization.mixup' is read by task image-classification only"):
        load_recipe(text_recipe(regularization={"mixup": 0.2}))


# ----------------------------------------------------------------------------------------------- EMA


class _Weights:
    """Records the trained weights after every optimizer step (after the EMA callback has seen them)."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kw):
                outer.steps.append({n: p.detach().clone() for n, p in model.named_parameters()})

        self.steps, self.callback = [], CB()


def test_ema_is_the_hand_computed_average_and_what_the_run_saves(image_recipe):
    import hftl
    from transformers import AutoModelForImageClassification

    w = _Weights()
    r = hftl.train(image_recipe(ema={"decay": 0.8}, training={"num_train_epochs": 2}), callbacks=[w.callback])
    assert len(w.steps) == r.trainer.state.global_step == 8
    hand = dict(w.steps[0])  # step 1: the average starts at the weights (decay 0 on its first update)
    for step in w.steps[1:]:
        hand = {n: 0.8 * hand[n] + 0.2 * step[n] for n in hand}
    saved = AutoModelForImageClassification.from_pretrained(r.output_dir)
    for n, p in saved.named_parameters():
        assert torch.allclose(p, hand[n], atol=1e-6), n
    raw = w.steps[-1]["classifier.weight"]
    assert not torch.allclose(saved.classifier.weight, raw, atol=1e-6)  # the average, not the last step
    assert "the exponential moving average" in (r.output_dir / "README.md").read_text()


def test_ema_resumes_from_its_checkpoint(image_recipe, tmp_path):
    """The checkpoint holds the average so far; the resumed run continues it (checked against its own steps: the
    Trainer's resumed data order is its own business)."""
    import hftl
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    common = {"max_steps": 8, "save_strategy": "steps", "save_steps": 4, "save_total_limit": None, "eval_strategy": "no"}
    w = _Weights()
    full = hftl.train(image_recipe(ema={"decay": 0.7}, training={**common, "output_dir": str(tmp_path / "full")}),
                      callbacks=[w.callback])
    hand = dict(w.steps[0])
    for step in w.steps[1:4]:
        hand = {n: 0.7 * hand[n] + 0.3 * step[n] for n in hand}
    stored = load_file(str(full.output_dir / "checkpoint-4" / "ema.safetensors"))
    assert all(torch.allclose(stored[n], hand[n], atol=1e-6) for n in hand)  # the average after step 4

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(full.output_dir / "checkpoint-4", resumed_dir / "checkpoint-4")
    w2 = _Weights()
    hftl.train(image_recipe(ema={"decay": 0.7}, training={**common, "output_dir": str(resumed_dir),
                                                          "resume_from_checkpoint": True}), callbacks=[w2.callback])
    assert len(w2.steps) == 4  # steps 5..8
    hand = {n: stored[n] for n in hand}
    for step in w2.steps:
        hand = {n: 0.7 * hand[n] + 0.3 * step[n] for n in hand}
    saved = AutoModelForImageClassification.from_pretrained(resumed_dir)
    assert all(torch.allclose(p, hand[n], atol=1e-6) for n, p in saved.named_parameters())


def test_ema_refused_with_sharded_weights(image_recipe):
    from hftl.recipe import load_recipe

    with pytest.raises(RecipeError, match="'ema' needs every weight on every rank"):
        load_recipe(image_recipe(ema={"decay": 0.9}, training={"fsdp": "full_shard"}))


DDP_EMA = r"""
import hashlib, json, sys, hftl
r = hftl.train(json.loads(sys.argv[1]))
sd = r.model.state_dict()
ema = r.trainer.feature("ema").ema.ema.module.state_dict()
json.dump({"world_size": r.trainer.args.world_size,
           "digest": {n: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest() for n, t in sd.items()},
           "model_is_ema": all(bool((sd[n] == ema[n]).all()) for n in sd)},
          open(f"{sys.argv[2]}/rank{r.trainer.args.process_index}.json", "w"))
"""


@pytest.mark.slow
def test_ema_under_ddp_two_processes(image_recipe, tmp_path):
    script = tmp_path / "ddp_ema.py"
    script.write_text(DDP_EMA)
    recipe = image_recipe(ema={"decay": 0.8}, training={"num_train_epochs": 2, "per_device_train_batch_size": 4,
                                                        "use_cpu": True})
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
         json.dumps(recipe), str(tmp_path)], capture_output=True, text=True, env=child_env(), timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"], "the ranks' averages drifted apart"
    assert all(r["model_is_ema"] for r in ranks)
    from transformers import AutoModelForImageClassification

    saved = AutoModelForImageClassification.from_pretrained(tmp_path / "out").state_dict()  # rank 0's average
    assert all(hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() == ranks[0]["digest"][n]
               for n, t in saved.items())


# ----------------------------------------------------------------------------------------------- TTA


def test_eval_tta_averages_probabilities_over_flips(image_recipe, image_dirs):
    import hftl
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    r = hftl.train(image_recipe(eval_tta=["hflip"], training={"num_train_epochs": 1}))
    model = AutoModelForImageClassification.from_pretrained(r.output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(r.output_dir)
    names = json.loads((r.output_dir / "labels.json").read_text())
    files = sorted((image_dirs[1]).rglob("*.png"))
    x = processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    y = torch.tensor([names.index(f.parent.name) for f in files])
    with torch.no_grad():
        p = (model(pixel_values=x).logits.softmax(-1) + model(pixel_values=x.flip(-1)).logits.softmax(-1)) / 2
        plain = model(pixel_values=x).logits
    assert r.metrics["eval_loss"] == pytest.approx(float(-p[torch.arange(len(y)), y].log().mean()), abs=1e-5)
    assert r.metrics["eval_accuracy"] == pytest.approx(float((p.argmax(-1) == y).float().mean()))
    plain_loss = float(torch.nn.functional.cross_entropy(plain, y))
    assert r.metrics["eval_loss"] != pytest.approx(plain_loss, abs=1e-6)  # not the single-view number
    assert "test-time augmentation" in (r.output_dir / "README.md").read_text()


def test_eval_tta_is_for_images_only(text_recipe):
    from hftl.recipe import load_recipe

    with pytest.raises(HftlError, match=r"'eval_tta' is read by task image-classification only"):
        load_recipe(text_recipe(eval_tta=["hflip"]))


# ----------------------------------------------------------------------------------------------- lr-find


def test_lr_find_respects_the_groups_and_leaves_the_model_untouched(image_recipe, tmp_path):
    import hftl

    recipe = image_recipe(strategy={"discriminative_lr": {"layer_decay": 0.5}}, training={"learning_rate": 1e-3})
    seen = []
    from transformers import TrainerCallback

    class Groups(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kw):
            seen.append(sorted({g["lr"] for g in optimizer.param_groups if g["params"]}))

    import hftl.training.lr_find as lf

    original = lf._Recorder.__init__

    def init(self, trainer, *a, **k):
        original(self, trainer, *a, **k)
        trainer.add_callback(Groups())

    lf._Recorder.__init__ = init
    try:
        result = hftl.lr_find(recipe, start_lr=1e-6, end_lr=1.0, num_steps=30, output=tmp_path / "lr.png")
    finally:
        lf._Recorder.__init__ = original
    fresh = _setup(recipe).model.state_dict()  # what setup() builds (seeded head)
    after = result.model.state_dict()
    assert all(torch.equal(after[k], fresh[k]) for k in fresh)  # bit-identical: the test trained a copy's worth
    assert result.lrs[0] == pytest.approx(1e-6) and result.lrs == sorted(result.lrs)
    for lrs in seen:  # every group keeps its layer-decay ratio to the base learning rate
        assert all(b / a == pytest.approx(2.0) for a, b in zip(lrs, lrs[1:]))
    assert result.suggestion is None or 1e-6 <= result.suggestion <= 1.0
    assert (tmp_path / "lr.png").stat().st_size > 1000 and json.loads((tmp_path / "lr.json").read_text())["lrs"]
    assert not (tmp_path / "out").exists()  # nothing in the recipe's output dir


def test_lr_find_cli_stops_when_the_loss_diverges(image_recipe, tmp_path):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(image_recipe()))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HFTL_LOG_LEVEL="WARNING")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "hftl.cli", "lr-find", str(path), "--start-lr", "1e-5",
                           "--end-lr", "1e4", "--steps", "60", "--output", str(tmp_path / "curve.png")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "suggested training.learning_rate:" in proc.stdout
    data = json.loads((tmp_path / "curve.json").read_text())
    assert len(data["lrs"]) < 60  # stopped early: at 1e4 the loss explodes
