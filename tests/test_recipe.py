"""Recipe loading, overrides, defaults and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import hftl
from hftl.errors import RecipeError
from hftl.recipe import parse_override

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"task": "text-classification", "model": {"model_name_or_path": "m"}, "data": {"train_file": "t.csv"}}


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = hftl.load_recipe(path)
    assert recipe.training["output_dir"].startswith("outputs/")
    assert path.read_text().startswith("#"), "each recipe opens with a comment: what it trains, how to run it"


def test_overrides_are_typed_like_yaml():
    r = hftl.load_recipe(MINIMAL, overrides=["training.learning_rate=3e-4", "peft.method=lora",
                                             "peft.target_modules=[q_proj,v_proj]", "data.max_seq_length=64",
                                             "strategy.freeze_batchnorm=true"])
    assert r.training["learning_rate"] == 3e-4
    assert r.peft.options()["target_modules"] == ["q_proj", "v_proj"]
    assert r.data.max_seq_length == 64 and r.strategy.freeze_batchnorm is True
    assert parse_override("a.b=hello world") == (["a", "b"], "hello world")
    with pytest.raises(RecipeError, match="dotted.key=value"):
        parse_override("training.learning_rate")


def test_defaults_are_filled_in():
    r = hftl.load_recipe(MINIMAL)
    assert r.training["eval_strategy"] == "epoch" and r.training["report_to"] == "none"
    assert r.training["average_tokens_across_devices"] is False
    assert r.model.trust_remote_code is False and r.model.model_revision == "main"
    assert r.strategy.freeze == "none" and r.seed == 42
    r = hftl.load_recipe({**MINIMAL, "strategy": {"preset": "feature_extraction"}})
    assert r.strategy.freeze == "backbone" and r.strategy.freeze_batchnorm is True
    r = hftl.load_recipe({**MINIMAL, "strategy": {"preset": "feature_extraction", "freeze_batchnorm": False}})
    assert r.strategy.freeze_batchnorm is False  # explicit keys win over the preset


@pytest.mark.parametrize("recipe,needle", [
    ({**MINIMAL, "trainig": {}}, "Unknown recipe key 'trainig'. Did you mean 'training'?"),
    ({**MINIMAL, "training": {"learnin_rate": 1}}, "'training.learnin_rate'. Did you mean 'learning_rate'?"),
    ({**MINIMAL, "model": {"model_name_or_pth": "x"}}, "Did you mean 'model_name_or_path'?"),
    ({**MINIMAL, "data": {"train_file": "a", "max_seq_lenght": 3}}, "'data.max_seq_lenght'. Did you mean 'max_seq_length'?"),
    ({**MINIMAL, "strategy": {"freez": "none"}}, "Did you mean 'freeze'?"),
    ({**MINIMAL, "task": "text-clasification"}, "Did you mean 'text-classification'?"),
    ({**MINIMAL, "strategy": {"preset": "ful"}}, "Did you mean 'full'?"),
    ({**MINIMAL, "peft": {"method": "lora", "rank": 8}}, "'peft.rank'"),
    ({**MINIMAL, "peft": {"method": "lorra"}}, "Did you mean 'lora'?"),
    ({**MINIMAL, "training": {"num_train_epochs": "three"}}, "training"),
    ({**MINIMAL, "training": {"learning_rate": -1}}, "training.learning_rate"),
    ({**MINIMAL, "data": {"train_file": "a", "train_val_split": 1.5}}, "data.train_val_split"),
    ({**MINIMAL, "data": {"train_file": "a", "dataset_name": "b"}}, "exactly one data source"),
    ({**MINIMAL, "hub": {"push": True}}, "hub.repo_id"),
    ({**MINIMAL, "strategy": {"gradual_unfreezing": {"every_epochs": 1, "every_steps": 2}}}, "exactly one of"),
    ({**MINIMAL, "strategy": {"discriminative_lr": {}}}, "layer_decay"),
    ({"model": {"model_name_or_path": "m"}, "data": {"train_file": "t.csv"}}, "'task' is required"),
])
def test_errors_name_the_key_and_suggest(recipe, needle):
    with pytest.raises(RecipeError) as err:
        hftl.load_recipe(recipe)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_is_safe_loaded(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    p.write_text(f"task: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError, match="safe loading"):
        hftl.load_recipe(p)
    assert not marker.exists()
    p.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        hftl.load_recipe(p)


def test_validate_cli_prints_resolved_recipe_or_errors(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(MINIMAL))
    ok = subprocess.run([sys.executable, "-m", "hftl.cli", "validate", str(p), "seed=7"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    assert resolved["seed"] == 7 and resolved["training"]["eval_strategy"] == "epoch"
    p.write_text(yaml.safe_dump({**MINIMAL, "trainig": {}}))
    bad = subprocess.run([sys.executable, "-m", "hftl.cli", "validate", str(p)], capture_output=True, text=True)
    assert bad.returncode == 1 and "Did you mean 'training'" in bad.stderr and "Traceback" not in bad.stderr


def test_yaml_1_1_boolean_words_are_strings(tmp_path):
    """`eval_strategy: no` is how the Trainer docs spell it; YAML 1.1 (PyYAML) read it as False."""
    p = tmp_path / "r.yaml"
    p.write_text("task: text-classification\nmodel: {model_name_or_path: m}\ndata: {train_file: t.csv, augment: no}\n"
                 "training: {eval_strategy: no, save_strategy: no, fp16: no, use_cpu: yes}\noverwrite_output_dir: yes\n")
    r = hftl.load_recipe(p)
    assert r.training["eval_strategy"] == "no" and r.training["save_strategy"] == "no"
    # Fields that take only a boolean accept the words as before.
    assert r.training["fp16"] is False and r.training["use_cpu"] is True and r.overwrite_output_dir is True
    assert r.data.augment.horizontal_flip is False
    r = hftl.load_recipe(MINIMAL, overrides=["training.eval_strategy=no", "training.save_strategy=no",
                                             "strategy.freeze_batchnorm=on"])
    assert r.training["eval_strategy"] == "no" and r.training["save_strategy"] == "no"
    assert r.strategy.freeze_batchnorm is True
    assert yaml.safe_load(r.to_yaml())["training"]["eval_strategy"] == "no"  # the saved recipe round-trips


def test_bad_interval_strategy_lists_the_allowed_values():
    with pytest.raises(RecipeError) as err:
        hftl.load_recipe(MINIMAL, overrides=["training.eval_strategy=maybe"])
    msg = str(err.value)
    assert "'training.eval_strategy'" in msg and "'training.save_strategy'" not in msg
    assert "maybe" in msg and "['no', 'steps', 'epoch']" in msg


def test_model_revision_and_its_deprecated_alias(caplog):
    r = hftl.load_recipe({**MINIMAL, "model": {"model_name_or_path": "m", "model_revision": "v2"}})
    assert r.model.model_revision == "v2"
    with caplog.at_level("WARNING", logger="hftl"):
        r = hftl.load_recipe({**MINIMAL, "model": {"model_name_or_path": "m", "revision": "v1"}})
    assert r.model.model_revision == "v1"
    assert "'model.revision' is deprecated: use model.model_revision" in caplog.text
    with pytest.raises(RecipeError, match="model_revision only"):
        hftl.load_recipe({**MINIMAL, "model": {"model_name_or_path": "m", "revision": "a", "model_revision": "b"}})


def test_a_finished_runs_trainer_still_evaluates(text_recipe):
    """hftl.train reads the run's recipe.yaml back (the evaluation report), and validating a recipe builds a
    TrainingArguments, which resets Accelerate's state: the returned Trainer must still evaluate and predict."""
    import hftl

    r = hftl.train(text_recipe(training={"num_train_epochs": 1}))
    hftl.load_recipe(r.output_dir / "recipe.yaml")  # once more, explicitly
    again = r.trainer.evaluate()
    assert again["eval_accuracy"] == r.metrics["eval_accuracy"]
    assert r.trainer.predict(r.trainer.eval_dataset).predictions.shape == (len(r.trainer.eval_dataset), 2)
