"""Each task end to end through hftl.train: it learns, and it writes every output."""

from __future__ import annotations

import json

import pytest
import torch

import hftl
from hftl.errors import HftlError


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_text_classification_learns_and_writes_outputs(text_recipe):
    r = hftl.train(text_recipe())
    assert r.metrics["eval_accuracy"] >= 0.9, r.metrics  # separable toy data: prove learning
    assert 0.0 <= r.metrics["eval_f1_macro"] <= 1.0
    out = r.output_dir
    for name in ("model.safetensors", "config.json", "recipe.yaml", "metrics.json", "curves.png", "README.md",
                 "plan.md", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) or all(p.name == "training_args.bin" for p in out.glob("*.bin"))
    assert json.loads((out / "metrics.json").read_text())["eval_accuracy"] == r.metrics["eval_accuracy"]
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}  # labels given as strings, sorted
    card = (out / "README.md").read_text()
    assert "eval_accuracy" in card and "| depth |" in card
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # the saved model reloads into the same logits
    batch = r.trainer.data_collator([r.trainer.eval_dataset[i] for i in range(4)])
    batch.pop("labels")
    assert torch.allclose(_logits(r.model, batch), _logits(hftl.load_model(out), batch), atol=1e-5)


def test_image_classification_learns_with_checkpoint_preprocessing(image_recipe, vit_dir):
    r = hftl.train(image_recipe())
    assert r.metrics["eval_accuracy"] >= 0.9, r.metrics
    assert r.model.config.id2label == {0: "blue", 1: "red"}
    assert (r.output_dir / "preprocessor_config.json").is_file()
    assert "mean (0.5, 0.5, 0.5)" in (r.output_dir / "README.md").read_text()


def test_preprocessing_comes_from_the_processor():
    from transformers import ConvNextImageProcessor, ViTImageProcessor
    from torchvision.transforms import v2 as T

    from hftl.tasks.image_classification import preprocessing_of

    p = preprocessing_of(ViTImageProcessor(size={"height": 48, "width": 40}, image_mean=[0.1, 0.2, 0.3],
                                           image_std=[0.4, 0.5, 0.6], resample=3))
    assert p.size == (48, 40) and p.mean == (0.1, 0.2, 0.3) and p.std == (0.4, 0.5, 0.6)
    assert p.interpolation == T.InterpolationMode.BICUBIC
    p = preprocessing_of(ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875))
    assert p.size == (224, 224) and p.resize == (256, 256)


def test_image_size_resizes_straight_to_the_asked_size(image_recipe, resnet_dir):
    r = hftl.train(image_recipe(model_dir=resnet_dir, data={"image_size": 24, "max_train_samples": 8,
                                                            "max_eval_samples": 4}, training={"num_train_epochs": 1}))
    from hftl.training.setup import setup

    s = setup(hftl.load_recipe(r.output_dir / "recipe.yaml"))
    assert s.train_dataset[0]["pixel_values"].shape == (3, 24, 24)
    card = (r.output_dir / "README.md").read_text()
    assert "ViTImageProcessor: resize (24, 24), " in card and "center crop" not in card


def test_image_size_a_fixed_size_model_cannot_take_is_refused_before_training(image_recipe):
    recipe = image_recipe(data={"image_size": [16, 24]})  # the tiny ViT takes 32x32 only
    with pytest.raises(hftl.HftlError, match=r"data\.image_size' \[16, 24\]: ViTForImageClassification"):
        hftl.train(recipe)
    assert not hftl.load_recipe(recipe).output_dir.exists()


def test_timm_model_through_timm_wrapper(image_recipe, tmp_path):
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperImageProcessor

    d = tmp_path / "timm_resnet"
    config = TimmWrapperConfig(architecture="resnet10t", num_labels=5,
                               pretrained_cfg={"input_size": [3, 32, 32], "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2],
                                               "interpolation": "bicubic", "crop_pct": 1.0, "num_classes": 5})
    TimmWrapperForImageClassification(config).save_pretrained(d)
    TimmWrapperImageProcessor(pretrained_cfg=config.pretrained_cfg, architecture="resnet10t").save_pretrained(d)
    r = hftl.train(image_recipe(model_dir=d, training={"num_train_epochs": 1},
                                strategy={"preset": "feature_extraction"}))
    assert r.model.config.num_labels == 2  # 5-class head replaced for the data's 2 labels
    assert "timm_model.fc.weight" in r.plan.layer_map.names_at(r.plan.layer_map.head_depth)
    assert "(0.4, 0.4, 0.4)" in (r.output_dir / "README.md").read_text()


@pytest.mark.parametrize("fmt", ["json", "parquet", "save_to_disk"])
def test_data_sources_and_int_labels(text_recipe, tmp_path, fmt):
    import datasets

    from conftest import make_text_rows

    rows = make_text_rows(96, 0)
    ds = datasets.Dataset.from_list([{"sentence": r["text"], "stars": 5 if r["label"] == "pos" else 1} for r in rows])
    if fmt == "json":
        path = tmp_path / "train.jsonl"
        ds.to_json(path)
        data = {"train_file": str(path)}
    elif fmt == "parquet":
        path = tmp_path / "train.parquet"
        ds.to_parquet(path)
        data = {"train_file": str(path)}
    else:
        path = tmp_path / "saved"
        datasets.DatasetDict(train=ds).save_to_disk(path)
        data = {"dataset_name": str(path)}
    recipe = text_recipe(training={"num_train_epochs": 1})
    recipe["data"] = {**data, "label_column_name": "stars", "train_val_split": 0.25, "max_seq_length": 16}
    r = hftl.train(recipe)
    assert r.model.config.id2label == {0: "1", 1: "5"}
    assert len(r.trainer.eval_dataset) == 24 and len(r.trainer.train_dataset) == 72  # seeded hold-out


def test_non_empty_output_dir_is_refused_and_left_alone(text_recipe, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HftlError, match="overwrite_output_dir"):
        hftl.train(text_recipe())
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failed_setup_leaves_no_output_dir(text_recipe, tmp_path):
    recipe = text_recipe()
    recipe["data"]["label_column_name"] = "sentiment"
    with pytest.raises(HftlError, match="'data.label_column_name'.*columns are: text, label"):
        hftl.train(recipe)
    assert not (tmp_path / "out").exists()


def test_evaluation_does_not_change_training(text_recipe, monkeypatch):
    """Trap: every DataLoader iterator draws a seed from the global RNG, so evaluating between epochs shifts
    every later dropout mask and the trained model would depend on eval_strategy."""
    from transformers import Trainer

    from hftl.training.trainer import HftlTrainer

    def weights(eval_strategy: str) -> dict:
        r = hftl.train(text_recipe(strategy={"preset": "full"}, overwrite_output_dir=True,
                                   training={"num_train_epochs": 2, "eval_strategy": eval_strategy}))
        return {k: v.clone() for k, v in r.model.state_dict().items()}

    quiet = weights("no")
    assert all(torch.equal(quiet[k], v) for k, v in weights("epoch").items())
    # Control: with the Trainer's own evaluate the weights do differ, so this test can fail.
    monkeypatch.setattr(HftlTrainer, "evaluate", Trainer.evaluate)
    assert not all(torch.equal(quiet[k], v) for k, v in weights("epoch").items())


def test_the_final_evaluation_runs_once(text_recipe, monkeypatch):
    """Trap: a run evaluated at the end of its last epoch, then again for metrics.json, then once more for the
    per-class report (and the card's "Per evaluation" table repeated its last row). Now one evaluation per epoch:
    metrics.json and eval/ are the last one's."""
    from transformers import TrainerCallback

    import hftl.training.finish

    class Count(TrainerCallback):
        evaluations = 0

        def on_evaluate(self, args, state, control, **kwargs):
            Count.evaluations += 1

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the report must come from the Trainer's last evaluation")

    monkeypatch.setattr(hftl.training.finish, "score_prepared", no_second_pass)
    r = hftl.train(text_recipe(training={"num_train_epochs": 2}), callbacks=[Count()])
    assert Count.evaluations == 2
    evals = [h for h in r.trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 2 and evals[-1]["eval_accuracy"] == r.metrics["eval_accuracy"]
    report = json.loads((r.output_dir / "eval" / "metrics.json").read_text())
    assert report["eval_accuracy"] == r.metrics["eval_accuracy"] and report["examples"] == len(r.trainer.eval_dataset)
    # the report's predictions are the model's own
    batch = r.trainer.data_collator([r.trainer.eval_dataset[i] for i in range(len(r.trainer.eval_dataset))])
    labels = batch.pop("labels")
    accuracy = float((_logits(r.model, batch).argmax(-1) == labels).float().mean())
    assert accuracy == pytest.approx(r.metrics["eval_accuracy"])


def test_a_task_written_from_the_documented_template_trains(text_recipe, text_csv, monkeypatch):
    """The template in hftl/tasks/base.py's docstring, as printed there, registers a task that trains and predicts."""
    import csv
    import textwrap

    from hftl.tasks import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # registered for this test only
    doc = base.__doc__
    start = doc.index("    from transformers import AutoModelForSequenceClassification")
    code = textwrap.dedent(doc[start:doc.index("\nMethods get recipe sections")])
    exec(compile(code, "template", "exec"), {})  # noqa: S102 -- hftl's own docstring
    assert "my-task" in hftl.tasks.task_names()
    recipe = text_recipe(training={"num_train_epochs": 3})
    recipe["task"] = "my-task"
    r = hftl.train(recipe)
    assert r.metrics["eval_accuracy"] >= 0.9
    rows = hftl.predict(r.output_dir, [str(text_csv[1])])  # a data file with the task's input column
    truth = [row["label"] for row in csv.DictReader(open(text_csv[1]))]
    assert len(rows) == len(truth) and sum(p["label"] == t for p, t in zip(rows, truth)) >= 0.9 * len(truth)
