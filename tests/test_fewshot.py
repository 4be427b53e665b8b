"""Few-shot: contrastive body tuning (pairs drawn as documented; the encoder moves, frozen parameters and the head do
not; a LoRA body), the head fitted to convergence (where 2 Trainer steps are not), and the recipe rules around them."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from hftl.errors import RecipeError
from hftl.recipe import load_recipe
from hftl.training.features.contrastive import draw_batches, draw_pairs
from hftl.training.setup import setup

FEWSHOT = {"strategy": {"freeze": "none", "head_fit": "lbfgs"},
           "contrastive": {"num_iterations": 2, "learning_rate": 1e-3}}


def test_pairs_are_drawn_as_documented():
    labels = [0, 0, 0, 1, 1, 2, -100]  # a class of two, one of one; an unlabelled row never enters a pair
    pairs = draw_pairs(labels, num_iterations=3, seed=0)
    examples = 6
    assert len(pairs) == 2 * 3 * examples
    positives = [(a, b) for a, b, y in pairs if y == 1.0]
    negatives = [(a, b) for a, b, y in pairs if y == 0.0]
    assert len(positives) == len(negatives) == 3 * examples  # balanced
    assert all(labels[a] == labels[b] for a, b in positives)
    assert all(labels[a] != labels[b] and labels[b] >= 0 for a, b in negatives)
    assert all(a != b for a, b in positives if labels[a] != 2)  # a partner other than itself where the class has one
    assert Counter(a for a, _ in positives) == Counter({i: 3 for i in range(examples)})  # every example, each round
    assert pairs == draw_pairs(labels, 3, seed=0) and pairs != draw_pairs(labels, 3, seed=1)  # seeded
    sampled = draw_pairs(labels, 3, seed=0, max_pairs=10)
    assert len(sampled) == 10 and sum(y for *_, y in sampled) == 5
    batches = draw_batches(labels, num_iterations=2, batch_size=4, seed=0)
    assert sorted(i for b in batches for i in b) == sorted(list(range(6)) * 2) and len(batches) == 3
    with pytest.raises(Exception, match="different classes"):
        draw_pairs([1, 1, 1], 2, 0)


def _tuned(recipe: dict):
    """(setup, parameters before, parameters after stage 1)."""
    s = setup(load_recipe(recipe))
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    contrastive = next(f for f in s.features if f.name == "contrastive")
    contrastive.before_train(s, None)
    after = dict(s.model.named_parameters())
    return s, before, after


def test_body_tuning_moves_the_encoder_and_nothing_frozen(text_recipe):
    s, before, after = _tuned(text_recipe(**{**FEWSHOT, "strategy": {
        "freeze": {"patterns": ["*embeddings*"]}, "head_fit": "lbfgs"}}))
    frozen = [n for n in before if "embeddings" in n]
    head = [n for n in before if n.startswith("classifier")]
    moved = [n for n in before if "encoder.layer" in n and not torch.equal(before[n], after[n])]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)  # frozen: bit-identical
    assert all(torch.equal(before[n], after[n]) for n in head)  # stage 1 never touches the head
    assert len(moved) > 10  # the encoder moved
    assert all(p.grad is None for p in s.model.parameters())
    assert {n for n, p in s.model.named_parameters() if p.requires_grad} == set(s.plan.trainable.active)
    r = next(f for f in s.features if f.name == "contrastive").result
    assert r["steps"] == 2 * 2 * len(s.train_dataset) // 16 and r["last_loss"] < r["first_loss"]


@pytest.mark.parametrize("loss", ["contrastive", "batch_hard_triplet"])
def test_the_other_losses_train_too(text_recipe, loss):
    s, before, after = _tuned(text_recipe(**{**FEWSHOT, "contrastive": {"num_iterations": 1, "loss": loss}}))
    assert any(not torch.equal(before[n], after[n]) for n in before if "encoder.layer" in n)
    r = next(f for f in s.features if f.name == "contrastive").result
    assert r["steps"] == (6 if loss == "batch_hard_triplet" else 12)  # 96 rows / 16; 2 x 96 pairs / 16


def test_a_lora_body_tunes_only_the_adapter(text_recipe):
    s, before, after = _tuned(text_recipe(
        peft={"method": "lora", "r": 4, "target_modules": ["query", "value"]}, strategy={"head_fit": "lbfgs"},
        contrastive={"num_iterations": 1}))
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert any(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in base)


def test_batchnorm_statistics_stay_when_frozen(image_recipe, resnet_dir):
    s, before, after = _tuned(image_recipe(model_dir=resnet_dir, data={"augment": False}, **{
        **FEWSHOT, "strategy": {"freeze": "none", "freeze_batchnorm": True, "head_fit": "lbfgs"}}))
    stats = {n: b.clone() for n, b in s.model.named_buffers() if "running_mean" in n}
    assert any(not torch.equal(before[n], after[n]) for n in before if "encoder" in n)
    s2, _, _ = _tuned(image_recipe(model_dir=resnet_dir, data={"augment": False}, **FEWSHOT))  # preset full: BN trains
    fresh = dict(setup(load_recipe(image_recipe(model_dir=resnet_dir, data={"augment": False}))).model.named_buffers())
    assert all(torch.equal(stats[n], fresh[n]) for n in stats)
    assert any(not torch.equal(b, fresh[n]) for n, b in s2.model.named_buffers() if "running_mean" in n)


def _loss_and_accuracy(model, dataset, collator):
    from hftl.data import batches

    model.eval()
    with torch.no_grad():
        out = [(model(**b.inputs).logits, b.labels) for b in batches(dataset, collator, 64)]
    logits = torch.cat([o for o, _ in out])
    labels = torch.cat([y for _, y in out])
    return torch.nn.functional.cross_entropy(logits, labels).item(), (logits.argmax(-1) == labels).float().mean().item()


def test_the_head_converges_where_two_steps_do_not(text_recipe, tmp_path):
    """Frozen random features: 2 Trainer steps leave the head far from fitted; L-BFGS reaches the optimum of the
    L2-regularised objective (its gradient vanishes) and fits the training rows."""
    import hftl
    from hftl.training.features.head_fit import head_inputs

    frozen = {"preset": "feature_extraction"}
    two = hftl.train(text_recipe(strategy=frozen, training={"max_steps": 2, "learning_rate": 1e-3,
                                                            "output_dir": str(tmp_path / "two")}))
    fitted = hftl.train(text_recipe(strategy={**frozen, "head_fit": "lbfgs", "head_c": 1e4},
                                    training={"output_dir": str(tmp_path / "fitted")}))
    s = setup(load_recipe(text_recipe(strategy=frozen)))
    loss_two, acc_two = _loss_and_accuracy(two.model, s.train_dataset, s.collator)
    loss_fit, acc_fit = _loss_and_accuracy(fitted.model, s.train_dataset, s.collator)
    assert loss_fit < loss_two - 0.1 and acc_fit > acc_two + 0.15, (loss_fit, loss_two, acc_fit, acc_two)
    assert fitted.metrics["head_fit_train_accuracy"] == pytest.approx(acc_fit, abs=1e-4)
    # the optimum: d/dW [sum CE + |W|^2 / 2C] = 0
    head = fitted.model.classifier
    data = head_inputs(fitted.model, s.train_dataset, s.collator, 64)
    total = sum(torch.nn.functional.cross_entropy(head(x), y, reduction="sum") for x, y in data)
    objective = total + (head.weight ** 2).sum() / (2 * 1e4)
    grads = torch.autograd.grad(objective, [head.weight, head.bias])
    assert max(g.abs().max().item() for g in grads) < 1e-3 * max(1.0, objective.item())
    # only the head changed: the backbone is the one the 2-step run kept frozen too
    a, b = dict(two.model.named_parameters()), dict(fitted.model.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a if not n.startswith("classifier"))


def test_a_fewshot_run_is_a_normal_run_dir(text_recipe, tmp_path):
    """Stage 1 + the converged head through hftl.train: plan and card say what ran; the saved model predicts what
    the trained model computes."""
    import hftl

    result = hftl.train(text_recipe(**FEWSHOT))
    out = result.output_dir
    plan, card = (out / "plan.md").read_text(), (out / "README.md").read_text()
    assert "Stage 1, before the Trainer: contrastive body tuning on 384 pairs" in plan
    assert "L-BFGS" in plan and "Contrastive body tuning" in card and "Head fitted to convergence" in card
    m = result.metrics
    assert m["contrastive_steps"] == 24 and m["head_fit_iterations"] > 0 and result.trainer.state.global_step == 0
    texts = ["a good film", "a bad film"]
    got = hftl.predict(out, texts)
    tok = result.trainer.processing_class
    model = result.model.eval()
    with torch.no_grad():
        probs = model(**tok(texts, return_tensors="pt", padding=True)).logits.softmax(-1)
    labels = result.label_names
    for row, p in zip(got, probs):
        assert row["label"] == labels[int(p.argmax())] and row["score"] == pytest.approx(p.max().item(), abs=1e-5)


def test_fewshot_combinations_are_refused(text_recipe):
    """(More in tests/bad_recipes: contrastive_*, strategy_head_fit_*, data_augment_policy_on_text_task.)"""
    with pytest.raises(RecipeError, match="head_fit.*ema averages"):
        load_recipe(text_recipe(strategy={"head_fit": "lbfgs"}, ema={}))
    with pytest.raises(RecipeError, match="head_fit.*mixup"):
        load_recipe(text_recipe(strategy={"head_fit": "lbfgs"}, regularization={"label_smoothing": 0.1, "mixup": 0.2}))


def test_augment_false_and_the_fewshot_keys_on_other_tasks(text_recipe, tmp_path):
    assert load_recipe(text_recipe(data={"augment": False})).data.augment.horizontal_flip is False
    lm = {"task": "causal-lm", "model": {"model_name_or_path": "m"}, "data": {"train_file": "t.txt"},
          "training": {"output_dir": str(tmp_path)}}
    with pytest.raises(RecipeError, match="head_fit.*not one of"):
        load_recipe({**lm, "strategy": {"head_fit": "lbfgs"}})
    with pytest.raises(RecipeError, match="'contrastive' is read by task"):
        load_recipe({**lm, "contrastive": {}})
