"""Continual fine-tuning (`continual:`): start from a previous run, replay / EWC against forgetting.

Toy sequence with one head (pos vs neg): the old task's cue words are POS[:3] / NEG[:3]; the new task's are
POS[3:] / NEG[3:], and its rows also carry one old cue word at random -- on the new data the old words say
nothing, so training on it alone unlearns them (the old task is forgotten), while a joint solution exists.
"""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch

from conftest import FILLER, NEG, POS

OLD, NEW = (POS[:3], NEG[:3]), (POS[3:], NEG[3:])


def cue_rows(n: int, seed: int, cues, noise=None) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = rng.sample(FILLER, 2) + rng.sample(cues[0] if positive else cues[1], 2) + ([rng.choice(noise)] if noise else [])
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _recipe(bert_dir, train, validation, out, epochs=5, lr=2e-3, **sections):
    return {"task": "text-classification", "model": {"model_name_or_path": str(bert_dir)},
            "data": {"train_file": train, "validation_file": validation, "max_seq_length": 16},
            "training": {"output_dir": str(out), "num_train_epochs": epochs, "learning_rate": lr,
                         "per_device_train_batch_size": 8, "save_strategy": "no", "report_to": "none", "logging_steps": 4},
            "seed": 0, **sections}


@pytest.fixture(scope="module")
def sequence(bert_dir, tmp_path_factory):
    """The data of both tasks and the previous run, trained on the old task."""
    import hftl

    d = tmp_path_factory.mktemp("continual")
    noise = OLD[0] + OLD[1]
    files = {"old_train": _csv(d / "old_train.csv", cue_rows(96, 0, OLD)), "old_val": _csv(d / "old_val.csv", cue_rows(48, 1, OLD)),
             "new_train": _csv(d / "new_train.csv", cue_rows(96, 2, NEW, noise)),
             "new_val": _csv(d / "new_val.csv", cue_rows(48, 3, NEW, noise))}
    previous = hftl.train(_recipe(bert_dir, files["old_train"], files["old_val"], d / "previous"))
    assert previous.metrics["eval_accuracy"] == 1.0
    return {**files, "previous": d / "previous", "previous_accuracy": previous.metrics["eval_accuracy"]}


def _continue(bert_dir, sequence, out, **continual):
    import hftl

    return hftl.train(_recipe(bert_dir, sequence["new_train"], sequence["new_val"], out, epochs=20, lr=5e-3,
                              continual={"previous": str(sequence["previous"]), **continual}))


def test_replay_and_ewc_forget_less_than_plain_continuation(bert_dir, sequence, tmp_path):
    plain = _continue(bert_dir, sequence, tmp_path / "plain")
    replay = _continue(bert_dir, sequence, tmp_path / "replay", replay={"fraction": 0.3})
    ewc = _continue(bert_dir, sequence, tmp_path / "ewc", ewc={"lambda": 1e5})
    for run in (plain, replay, ewc):
        m = run.metrics
        # training started from the previous run's weights: its old-task accuracy, chance on the new task
        assert m["continual_old_before_accuracy"] == sequence["previous_accuracy"]
        assert m["continual_new_before_accuracy"] < 0.7
        assert m["continual_new_after_accuracy"] >= 0.9  # the new task is learned either way
    forgot = plain.metrics["continual_old_before_accuracy"] - plain.metrics["continual_old_after_accuracy"]
    assert forgot >= 0.1  # plain continuation forgets
    for run in (replay, ewc):
        assert run.metrics["continual_old_after_accuracy"] > plain.metrics["continual_old_after_accuracy"]
    # replay mixed round(0.3 x 96) old rows into the 96 new ones; the EWC run logged its penalty
    assert len(replay.trainer.train_dataset) == 96 + 29 and len(plain.trainer.train_dataset) == 96
    assert any("loss_ewc" in h for h in ewc.trainer.state.log_history)
    # the numbers are in metrics.json and the card, with the plot
    out = tmp_path / "ewc"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["continual_old_after_accuracy"] == ewc.metrics["continual_old_after_accuracy"]
    card = (out / "README.md").read_text()
    assert "## Continual fine-tuning (forgetting)" in card and "EWC lambda 100000" in card
    assert (out / "forgetting.png").stat().st_size > 1000


def test_fisher_is_computed_once_and_stored_with_the_previous_run(bert_dir, sequence, tmp_path):
    from safetensors import safe_open

    from hftl.training.features.continual import FISHER_FILE

    path = sequence["previous"] / FISHER_FILE
    path.unlink(missing_ok=True)
    _continue(bert_dir, sequence, tmp_path / "first", ewc={"lambda": 10, "samples": 16})
    stamp = path.stat().st_mtime_ns
    with safe_open(str(path), "pt") as f:
        labels = ",".join(json.loads((sequence["previous"] / "labels.json").read_text()))
        assert f.metadata() == {"data": "training split", "samples": "16", "seed": "0", "labels": labels}
        fisher = {k: f.get_tensor(k) for k in f.keys()}
    assert all((v >= 0).all() for v in fisher.values()) and sum(float(v.sum()) for v in fisher.values()) > 0
    _continue(bert_dir, sequence, tmp_path / "second", ewc={"lambda": 10, "samples": 16})
    assert path.stat().st_mtime_ns == stamp  # read back, not recomputed
    _continue(bert_dir, sequence, tmp_path / "third", ewc={"lambda": 10, "samples": 8})
    assert path.stat().st_mtime_ns != stamp  # another sample count: another Fisher


def test_plan_and_validate_write_nothing(bert_dir, sequence, tmp_path):
    """hftl plan on a continual EWC recipe builds everything a run would, and writes no file anywhere: not the
    Fisher into the previous run dir, not the output dir (the Fisher is computed when training starts)."""
    import hftl
    from hftl.training.features.continual import FISHER_FILE

    previous = sequence["previous"]
    (previous / FISHER_FILE).unlink(missing_ok=True)
    before = sorted((p.relative_to(previous), p.stat().st_mtime_ns) for p in previous.rglob("*"))
    out = tmp_path / "planned"
    recipe = _recipe(bert_dir, sequence["new_train"], sequence["new_val"], out,
                     continual={"previous": str(previous), "ewc": {"lambda": 10, "samples": 8},
                                "replay": {"fraction": 0.3}})
    table = hftl.plan(recipe)
    assert "| head |" in table
    hftl.load_recipe(recipe)
    assert sorted((p.relative_to(previous), p.stat().st_mtime_ns) for p in previous.rglob("*")) == before
    assert not out.exists()


def test_ewc_penalty_equals_the_hand_computation():
    from hftl.training.features.continual import Ewc

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    fisher = {"weight": torch.rand(2, 3), "bias": torch.rand(2)}
    term = Ewc(model, fisher, strength=7.0)
    assert float(term(model, {}, None)) == 0.0  # at the anchor
    delta = {"weight": torch.randn(2, 3), "bias": torch.randn(2)}
    with torch.no_grad():
        model.weight += delta["weight"]
        model.bias += delta["bias"]
    expected = 7.0 / 2 * sum(float((fisher[k] * delta[k] ** 2).sum()) for k in fisher)
    assert float(term(model, {}, None)) == pytest.approx(expected, rel=1e-5)
    loss = term(model, {}, None)
    loss.backward()
    assert torch.allclose(model.weight.grad, 7.0 * fisher["weight"] * delta["weight"], atol=1e-5)


def none_rows(n: int, seed: int) -> list[dict]:
    """A third class: texts without any sentiment word."""
    rng = random.Random(seed)
    return [{"text": " ".join(rng.sample(FILLER, 4)), "label": "none"} for _ in range(n)]


def test_new_classes_grow_the_head_and_keep_the_old_predictions(bert_dir, sequence, tmp_path):
    """Class-incremental: the new data is a class the previous run never saw (plus, for validation, the old ones).
    The head grows by one output, the old rows kept and the new one the old rows' mean, so the old task scores as
    before at step 0; after training on the new class with replay, all three classes are predicted."""
    import hftl
    from hftl.training.setup import setup
    from hftl.recipe import load_recipe

    train = _csv(tmp_path / "none_train.csv", none_rows(48, 5))
    val = _csv(tmp_path / "mixed_val.csv", none_rows(16, 6) + cue_rows(32, 7, OLD))
    recipe = _recipe(bert_dir, train, val, tmp_path / "grown", epochs=12, lr=5e-3,
                     continual={"previous": str(sequence["previous"]), "replay": {"fraction": 1.0}, "new_classes": True})
    old_names = json.loads((sequence["previous"] / "labels.json").read_text())
    previous = hftl.load_model(sequence["previous"])
    s = setup(load_recipe(recipe))
    assert s.splits.label_names == old_names + ["none"]
    grown, before = s.model.classifier, previous.classifier
    assert torch.equal(grown.weight[:2], before.weight) and torch.equal(grown.bias[:2], before.bias)
    assert torch.allclose(grown.weight[2], before.weight.mean(0)) and s.model.num_labels == 3
    assert set(s.splits.train["labels"]) == {0, 1, 2}  # the new rows (id 2) and the replayed old ones (0, 1)
    result = hftl.train(recipe)
    m = result.metrics
    assert m["continual_old_before_accuracy"] == sequence["previous_accuracy"]  # growth changed no old prediction
    assert m["eval_accuracy"] >= 0.9 and m["continual_old_after_accuracy"] >= 0.9
    assert json.loads((result.output_dir / "labels.json").read_text()) == old_names + ["none"]
    reloaded = hftl.predict(result.output_dir, ["the movie was so", "good great day"])
    assert [p["label"] for p in reloaded] == ["none", "pos"]
