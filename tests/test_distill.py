"""Knowledge distillation: the loss by hand, the loss terms' weights and logs, a student that learns the teacher's
decision from the teacher alone (its own labels shuffled), DistilBERT-style truncation, bad teachers."""

from __future__ import annotations

import csv
import random

import pytest
import torch

from conftest import merge_sections

from hftl.errors import HftlError
from hftl.errors import RecipeError


def test_kd_loss_is_the_hand_formula():
    from hftl.training.features.distillation import kd_loss

    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    teacher = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    t = 2.0
    p = torch.softmax(teacher / t, -1)
    q = torch.softmax(student / t, -1)
    hand = t * t * (p * (p.log() - q.log())).sum(-1).mean()  # T^2 * KL(teacher || student), per example
    assert kd_loss(student, teacher, t) == pytest.approx(float(hand), abs=1e-6)
    assert kd_loss(teacher, teacher, t) == pytest.approx(0.0, abs=1e-7)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, bert_dir, text_csv):
    """A tiny BERT trained on the separable toy sentiment data (the teacher)."""
    import hftl

    out = tmp_path_factory.mktemp("teacher") / "run"
    r = hftl.train({"task": "text-classification", "model": {"model_name_or_path": str(bert_dir)},
                    "data": {"train_file": str(text_csv[0]), "validation_file": str(text_csv[1]), "max_seq_length": 16},
                    "training": {"output_dir": str(out), "num_train_epochs": 6, "learning_rate": 3e-3,
                                 "per_device_train_batch_size": 8, "save_strategy": "no", "report_to": "none"},
                    "seed": 0})
    assert r.metrics["eval_accuracy"] >= 0.9
    return out


@pytest.fixture(scope="module")
def shuffled_csv(tmp_path_factory, text_csv):
    rows = list(csv.DictReader(open(text_csv[0])))
    labels = [r["label"] for r in rows]
    random.Random(1).shuffle(labels)
    path = tmp_path_factory.mktemp("shuffled") / "train.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows({"text": r["text"], "label": lab} for r, lab in zip(rows, labels))
    agree = sum(a == r["label"] for a, r in zip(labels, rows)) / len(rows)
    assert agree < 0.7  # the shuffled labels carry little of the real signal
    return path


def _student(text_recipe, teacher_run, shuffled_csv, alpha, **extra):
    import hftl

    return hftl.train(text_recipe(data={"train_file": str(shuffled_csv)},
                                  distill={"teacher": str(teacher_run), "alpha": alpha, "temperature": 2.0, **extra},
                                  training={"num_train_epochs": 6, "logging_steps": 1}, seed=3))


def test_with_alpha_1_the_signal_comes_from_the_teacher(text_recipe, teacher_run, shuffled_csv):
    import hftl

    taught = _student(text_recipe, teacher_run, shuffled_csv, alpha=1.0)
    assert taught.metrics["eval_accuracy"] >= 0.85  # scored on the real labels
    alone = hftl.train(text_recipe(data={"train_file": str(shuffled_csv)}, seed=3,
                                   training={"num_train_epochs": 6, "output_dir": str(taught.output_dir) + "_alone"}))
    assert alone.metrics["eval_accuracy"] <= taught.metrics["eval_accuracy"] - 0.2
    logs = [h for h in taught.trainer.state.log_history if "loss_distill" in h]
    assert logs and all(h["loss"] == pytest.approx(h["loss_distill"], rel=1e-3, abs=1e-4) for h in logs)  # 0 x task
    assert "Knowledge distillation from" in (taught.output_dir / "README.md").read_text()


def test_loss_is_the_weighted_sum_of_its_logged_terms(text_recipe, teacher_run, text_csv):
    r = _student(text_recipe, teacher_run, text_csv[0], alpha=0.25)
    logs = [h for h in r.trainer.state.log_history if "loss_distill" in h]
    assert logs
    for h in logs:
        assert h["loss"] == pytest.approx(0.75 * h["loss_task"] + h["loss_distill"], rel=1e-3, abs=1e-4)
    teacher = r.trainer.feature("distill").term.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_student_from_teacher_keeps_the_chosen_blocks(text_recipe, teacher_run, text_csv):
    from transformers import AutoModelForSequenceClassification

    from hftl.training.setup import setup
    from hftl.recipe import load_recipe

    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_run)
    s = setup(load_recipe(text_recipe(distill={"teacher": str(teacher_run), "student_from_teacher": {"layers": [1]}})))
    student = s.model
    assert len(student.bert.encoder.layer) == 1 and student.config.num_hidden_layers == 1
    assert torch.equal(student.bert.encoder.layer[0].attention.self.query.weight,
                       teacher.bert.encoder.layer[1].attention.self.query.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)  # the teacher's head too
    assert s.plan.layer_map.num_blocks == 1
    with pytest.raises(HftlError, match=r"student_from_teacher.layers.*\[0, 5\].*0..1"):
        setup(load_recipe(text_recipe(distill={"teacher": str(teacher_run), "student_from_teacher": {"layers": [0, 5]}})))


def test_teacher_with_other_labels_is_refused(text_recipe, teacher_run, tmp_path):
    from hftl.training.setup import setup
    from hftl.recipe import load_recipe

    other = tmp_path / "three.csv"
    rows = list(csv.DictReader(open(text_recipe()["data"]["train_file"])))
    with open(other, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows({"text": r["text"], "label": "meh" if i % 5 == 0 else r["label"]} for i, r in enumerate(rows))
    recipe = text_recipe(data={"train_file": str(other), "validation_file": str(other)},
                         distill={"teacher": str(teacher_run)})
    with pytest.raises(HftlError, match=r"distill.teacher.*labels \['neg', 'pos'\] are not the data's"):
        setup(load_recipe(recipe))
    with pytest.raises(RecipeError, match="distill.alpha"):
        load_recipe(text_recipe(distill={"teacher": str(teacher_run), "alpha": 1.5}))
    with pytest.raises(RecipeError, match=r"'distill' is read by task"):
        load_recipe({**text_recipe(), "task": "token-classification", "distill": {"teacher": str(teacher_run)}})


def test_truncated_student_pools_with_its_own_attention_mask():
    """A deep copy keeps the pooling pre-hook: it must feed the copy's pooler, not the teacher's."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from hftl.training.features.distillation import truncate
    from hftl.model.remote.hftl_pooling import use_token_pooling

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=4,
                                                       num_attention_heads=2, intermediate_size=20)).eval()
    use_token_pooling(teacher, "mean")
    student = truncate(teacher, [0, 2]).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    student(input_ids=ids, attention_mask=mask)
    assert torch.equal(student.bert.pooler.attention_mask, mask)
    assert teacher.bert.pooler.attention_mask is None or teacher.bert.pooler.attention_mask is not mask
    # padding changes nothing: the student's pooler ignores it like the teacher's does
    short = student(input_ids=ids[:, :3], attention_mask=mask[:, :3]).logits
    assert torch.allclose(student(input_ids=ids, attention_mask=mask).logits, short, atol=1e-5)


def test_teacher_logits_are_computed_once_and_serve_every_step(text_recipe, teacher_run, text_csv):
    """cache_teacher (auto: the text is not augmented): every training batch is served from the cache, never by a
    teacher forward, and the student ends where the same run with the live teacher ends."""
    from hftl.training.features.distillation import example_keys

    cached = _student(text_recipe, teacher_run, text_csv[0], alpha=0.5)
    term = cached.trainer.feature("distill").term
    steps = cached.trainer.state.global_step
    assert term.cached is not None and len(term.cached) == len(cached.trainer.train_dataset)
    assert term.misses == 0 and term.hits == 6 * len(cached.trainer.train_dataset)  # 6 epochs, every example
    # the cached rows are the teacher's own logits for those examples, whatever the batch padding
    collator = cached.trainer.data_collator
    rows = [cached.trainer.train_dataset[i] for i in range(3)]
    batch = collator(rows)
    live = term.teacher_logits({k: v.to(next(term.teacher.parameters()).device) for k, v in batch.items()})
    assert torch.allclose(torch.stack([term.cached[k] for k in example_keys(batch)]), live.cpu(), atol=1e-5)
    padded = collator(rows + [max((cached.trainer.train_dataset[i] for i in range(len(cached.trainer.train_dataset))),
                                  key=lambda r: len(r["input_ids"]))])
    assert example_keys(padded)[:3] == example_keys(batch)  # more padding, same keys
    import hftl

    live_run = hftl.train(text_recipe(data={"train_file": str(text_csv[0])}, seed=3,
                                      distill={"teacher": str(teacher_run), "alpha": 0.5, "temperature": 2.0,
                                               "cache_teacher": False},
                                      training={"num_train_epochs": 6, "logging_steps": 1,
                                                "output_dir": str(cached.output_dir) + "_live"}))
    assert live_run.trainer.feature("distill").term.cached is None and live_run.trainer.state.global_step == steps
    a, b = cached.model.state_dict(), live_run.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


@pytest.fixture(scope="module")
def few_and_flipped(tmp_path_factory, text_csv):
    """4 labelled rows, and the whole training file with every label wrong (the transfer set: its labels must be
    dropped, never trained on)."""
    rows = list(csv.DictReader(open(text_csv[0])))
    d = tmp_path_factory.mktemp("transfer")
    for name, part in (("few.csv", rows[:4]), ("flipped.csv", [{"text": r["text"], "label": "neg" if r["label"] == "pos"
                                                               else "pos"} for r in rows])):
        with open(d / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(part)
    return d / "few.csv", d / "flipped.csv"


def test_unlabelled_rows_teach_through_the_teacher_alone(text_recipe, teacher_run, few_and_flipped):
    import hftl

    few, flipped = few_and_flipped
    common = {"training": {"num_train_epochs": 8, "logging_steps": 1}, "seed": 3}
    taught = hftl.train(text_recipe(data={"train_file": str(few)}, **common,
                                    distill={"teacher": str(teacher_run), "alpha": 0.5, "temperature": 2.0,
                                             "unlabeled": str(flipped)}))
    labels = taught.trainer.train_dataset["labels"]
    assert len(labels) == 4 + 96 and labels.count(-100) == 96  # the file's (wrong) labels were dropped
    alone = hftl.train(text_recipe(data={"train_file": str(few)}, **merge_sections(
        common, {"training": {"output_dir": str(taught.output_dir) + "_alone"}})))
    # the wrong labels, had they been trained on, would push the student below chance
    assert taught.metrics["eval_accuracy"] >= 0.85
    assert taught.metrics["eval_accuracy"] >= alone.metrics["eval_accuracy"] + 0.15
    assert "unlabelled rows of" in (taught.output_dir / "README.md").read_text()


def test_task_loss_skips_unlabelled_rows():
    """The distill feature's task loss: the labelled rows' mean cross-entropy, 0 for a batch of unlabelled rows
    (not NaN)."""
    from types import SimpleNamespace

    from hftl.recipe import DistillSection
    from hftl.training.features.distillation import Distill

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]], requires_grad=True)
    model = lambda **kw: SimpleNamespace(logits=logits)  # noqa: E731
    feature = Distill(DistillSection(teacher="t", unlabeled="rows.csv"))
    loss, _ = feature.task_loss(model, {"input_ids": None, "labels": torch.tensor([0, -100, 1])})
    hand = (torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([0, 1]), reduction="mean"))
    assert float(loss) == pytest.approx(float(hand))
    none, _ = feature.task_loss(model, {"input_ids": None, "labels": torch.tensor([-100, -100, -100])})
    assert float(none) == 0.0
    none.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
