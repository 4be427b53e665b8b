"""`strategy.preset: auto`: the evidence measures what it claims, the table is followed, explicit keys win, and
the probe leaves no trace (an auto run trains bit-identically to the strategy it chose, written out by hand)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import prepared

from hftl.strategy.auto import BN_FAR, FEWSHOT_ITERATIONS, decide


def evidence(median, separability=0.8, bn_shift=None, pieces=None):
    return {"train_examples": 10 * median, "classes": 10, "per_class_median": median, "per_class_min": median,
            "probe_examples": 10 * median, "probe_folds": 5, "probe_balanced_accuracy": 0.1 + 0.9 * separability,
            "separability": separability, "bn_shift": bn_shift, "bn_layers": 0 if bn_shift is None else 5,
            "pieces_per_word": pieces}


FEW = "contrastive body tuning + converged head"


@pytest.mark.parametrize("ev, choice", [
    (evidence(20), FEW),                                           # few-shot, whatever the similarity
    (evidence(20, bn_shift=BN_FAR + 0.1), FEW),
    (evidence(20, separability=0.2), FEW),
    (evidence(60), "feature extraction"),                          # small, close
    (evidence(60, bn_shift=0.1), "feature extraction"),
    (evidence(60, bn_shift=BN_FAR + 0.1), "full fine-tuning"),     # small but far: the features are the bottleneck
    (evidence(60, separability=0.2), "full fine-tuning"),          # the features do not separate the classes
    (evidence(60, pieces=3.0), "full fine-tuning"),                # the vocabulary does not fit the text
    (evidence(300), "discriminative LR + gradual unfreezing"),     # medium, close
    (evidence(300, bn_shift=BN_FAR + 0.1), "full fine-tuning"),    # medium, far
    (evidence(5000), "full fine-tuning"),                          # large
])
def test_decide_follows_the_table(ev, choice):
    d = decide(ev, learning_rate=1e-4, steps_per_epoch=100, depths=10)
    assert d.choice == choice
    if choice == FEW:  # SetFit's two stages: the whole body tuned on label pairs, then a converged head
        assert d.keys == {"freeze": "none", "freeze_batchnorm": True, "head_fit": "lbfgs"}
        assert d.blocks == {"contrastive": {"num_iterations": FEWSHOT_ITERATIONS}}
    elif choice == "feature extraction":  # the head fitted to convergence, not for the recipe's epochs
        assert d.keys == {"freeze": "backbone", "freeze_batchnorm": True, "head_fit": "lbfgs"}
    elif choice == "full fine-tuning":
        assert d.keys == {"freeze": "none", "freeze_batchnorm": False}
    else:  # head at 4x the learning rate, every depth group trainable within the first epoch
        assert d.keys["discriminative_lr"] == {"layer_decay": 0.8, "head_lr": pytest.approx(4e-4)}
        assert d.keys["gradual_unfreezing"] == {"every_steps": 10}
    assert d.similarity == ("low" if (ev["bn_shift"] or 0) > BN_FAR or ev["separability"] < 0.5
                            or (ev["pieces_per_word"] or 0) > 2 else "high")
    if choice != FEW:
        assert not d.blocks


def test_augmented_training_keeps_the_trainers_head():
    """A head fitted once on unaugmented features would drop data.augment: with augmentation, few-shot data takes the
    size row of the table, and a frozen backbone's head is trained by the Trainer."""
    few = decide({**evidence(20), "augmenting": True}, learning_rate=1e-4, steps_per_epoch=100, depths=10)
    assert few.choice == "feature extraction" and not few.blocks
    assert few.keys == {"freeze": "backbone", "freeze_batchnorm": True}  # no head_fit: the Trainer's
    assert any("augments its inputs" in r for r in few.reasons)
    far = decide({**evidence(20, bn_shift=BN_FAR + 0.1), "augmenting": True}, 1e-4, 100, 10)
    assert far.choice == "full fine-tuning"
    plain = decide({**evidence(20), "augmenting": False}, 1e-4, 100, 10)
    assert plain.choice == FEW


def test_advice_fits_the_task_and_says_how_sure_the_probe_is():
    """The seed's augmentation advice only where data.augment exists; a verdict within the probe's spread of the
    threshold is called uncertain."""
    far_text = {**evidence(60, separability=0.3), "augmentable": False}
    far_images = {**evidence(60, separability=0.3), "augmentable": True}
    text = " ".join(decide(far_text, 1e-4, 100, 10).lines())
    assert "augment" not in text and "uncertain" not in text
    assert "feature extraction + augmentation" in " ".join(decide(far_images, 1e-4, 100, 10).lines())
    shaky = {**evidence(60, separability=0.45), "separability_spread": 0.1}
    d = decide(shaky, 1e-4, 100, 10)
    lines = " ".join(d.lines())
    assert "uncertain" in lines and "0.45 ± 0.10" in lines
    assert d.similarity == "high" and d.choice == "feature extraction"  # a coin flip does not move the choice
    sure = {**evidence(60, separability=0.3), "separability_spread": 0.1}
    assert decide(sure, 1e-4, 100, 10).choice == "full fine-tuning"


def _model_and_data(image_recipe, resnet_dir):
    from hftl import model as models
    from hftl.recipe import load_recipe
    from hftl.tasks import get_task

    recipe = image_recipe(model_dir=resnet_dir)
    splits, processor, train, validation, collator = prepared(recipe)
    r = load_recipe(recipe)
    model = models.build_model(get_task(r.task), r.model, splits.label_names, r.data)
    return r, splits, processor, model, validation, collator


def test_probe_separability_reads_the_labels(image_recipe, resnet_dir):
    """Red vs blue images: the frozen features separate the true classes; with the labels shuffled, chance."""
    from hftl.strategy.auto import gather
    from hftl.tasks import get_task

    r, splits, processor, model, _, _ = _model_and_data(image_recipe, resnet_dir)
    task = get_task(r.task)
    real = gather(task, splits, processor, r.data, model, seed=0)
    rng = np.random.default_rng(0)
    shuffled = splits.train.map(lambda row: {"labels": int(rng.integers(0, 2))})
    splits.train = shuffled
    noise = gather(task, splits, processor, r.data, model, seed=0)
    assert real["probe_balanced_accuracy"] >= 0.9 and real["separability"] >= 0.8
    assert noise["separability"] < 0.4
    assert real["per_class_median"] == 16 and real["classes"] == 2 and real["bn_layers"] > 0


def test_bn_shift_grows_with_the_distance_from_the_running_statistics(image_recipe, resnet_dir):
    """The running statistics set from the red/blue images: those images sit at ~0, their negatives far away."""
    from datasets import Dataset

    from hftl.strategy.auto import _features

    r, splits, processor, model, validation, collator = _model_and_data(image_recipe, resnet_dir)
    batch = collator([validation[i] for i in range(len(validation))])
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the running statistics of exactly these images
    model.train()
    with torch.no_grad():
        model(pixel_values=batch["pixel_values"])
    model.eval()
    near = Dataset.from_dict({"pixel_values": batch["pixel_values"].numpy(), "labels": batch["labels"].numpy()})
    far = Dataset.from_dict({"pixel_values": (-3 * batch["pixel_values"] + 1).numpy(), "labels": batch["labels"].numpy()})
    collate = lambda rows: {"pixel_values": torch.tensor(np.stack([np.asarray(x["pixel_values"]) for x in rows]),  # noqa: E731
                                                         dtype=torch.float32)}
    x, near_shift, layers = _features(model, near, collate, batch_size=len(near))
    _, far_shift, _ = _features(model, far, collate, batch_size=len(far))
    assert x.shape == (len(near), 16) and layers > 0
    assert near_shift < 0.05 and far_shift > 20 * max(near_shift, 1e-3)


def test_explicit_keys_win(text_recipe, monkeypatch):
    """The recipe's own strategy keys stay; the rest comes from the choice. training.learning_rate is never
    touched: feature extraction's head gets its rate through strategy.discriminative_lr.head_lr."""
    import hftl.strategy.auto as auto
    from hftl.training.setup import setup
    from hftl.recipe import load_recipe

    monkeypatch.setattr(auto, "gather", lambda *a, **k: evidence(60))  # small, close: feature extraction
    s = setup(load_recipe(text_recipe(strategy={"preset": "auto", "freeze_batchnorm": False},
                                      training={"learning_rate": 1e-2})))
    assert s.plan.decision.choice == "feature extraction" and s.plan.decision.kept == ["strategy.freeze_batchnorm"]
    assert s.recipe.strategy.freeze == "backbone" and s.recipe.strategy.freeze_batchnorm is False
    assert s.recipe.strategy.head_fit == "lbfgs" and [f.name for f in s.features] == ["head_fit"]
    assert s.args.learning_rate == 1e-2  # the recipe's, as given
    table = s.plan.table()
    assert "Strategy chosen by `preset: auto`: **feature extraction**" in table and "| frozen |" in table
    assert "fitted to convergence by L-BFGS" in table
    s = setup(load_recipe(text_recipe(strategy={"preset": "auto", "head_fit": "trainer"})))
    assert s.plan.decision.kept == ["strategy.head_fit"] and not s.features
    monkeypatch.setattr(auto, "gather", lambda *a, **k: evidence(20))  # few-shot: the contrastive block too
    s = setup(load_recipe(text_recipe(strategy={"preset": "auto"})))
    assert s.recipe.contrastive.num_iterations == FEWSHOT_ITERATIONS
    assert [f.name for f in s.features] == ["contrastive", "head_fit"] and "Stage 1" in s.plan.table()
    s = setup(load_recipe(text_recipe(strategy={"preset": "auto"}, contrastive={"num_iterations": 2})))
    assert s.recipe.contrastive.num_iterations == 2 and "contrastive" in s.plan.decision.kept


def test_auto_run_equals_the_chosen_strategy_written_out(text_recipe, tmp_path):
    """Real evidence on the toy data; the run's card and plan show it; recipe.yaml holds the choice, and training
    from that file (no auto) gives bit-identical weights: the probe consumed no randomness and changed nothing."""
    import hftl
    from safetensors.torch import load_file

    auto = hftl.train(text_recipe(strategy={"preset": "auto"}, training={"num_train_epochs": 1}))
    decision = auto.plan.decision
    assert decision is not None and decision.evidence["per_class_median"] > 0
    card = (auto.output_dir / "README.md").read_text()
    plan = (auto.output_dir / "plan.md").read_text()
    for text in (card, plan):
        assert f"**{decision.choice}**" in text and "linear probe on frozen features" in text
    saved = hftl.load_recipe(auto.output_dir / "recipe.yaml")
    assert saved.strategy.freeze == decision.keys["freeze"]
    written = saved.to_dict()
    written["strategy"].pop("preset")
    written["training"]["output_dir"] = str(tmp_path / "by_hand")
    by_hand = hftl.train(written)
    assert by_hand.plan.decision is None
    a = load_file(auto.output_dir / "model.safetensors")
    b = load_file(by_hand.output_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((auto.output_dir / "metrics.json").read_text())["eval_accuracy"] == by_hand.metrics["eval_accuracy"]
