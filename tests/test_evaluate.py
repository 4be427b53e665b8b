"""`hftl eval`: on the run's own validation split it reproduces metrics.json, for every task; it writes the
per-class table, the confusion matrix and the worst examples; other labelled data must use the run's labels;
several runs are scored one by one and as an ensemble."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hftl
from hftl.errors import HftlError
from test_token_classification import ner_bert_dir, ner_files, ner_recipe  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def _same_as_training(out, metrics: dict):
    saved = json.loads((out / "metrics.json").read_text())
    keys = [k for k in saved if k.startswith("eval_") and k not in ("eval_loss", "eval_runtime")
            and not k.endswith("_per_second")]
    assert keys
    for k in keys:
        assert metrics[k] == pytest.approx(saved[k], abs=1e-6), k


def test_text_eval_equals_metrics_json_and_writes_the_report(text_recipe, text_csv, tmp_path):
    r = hftl.train(text_recipe(training={"num_train_epochs": 1}))
    # training already wrote the report, and the card shows the per-label table and the confusion matrix
    card = (r.output_dir / "README.md").read_text()
    assert (r.output_dir / "eval" / "confusion_matrix.png").is_file()
    assert "![confusion matrix](eval/confusion_matrix.png)" in card and "| label | precision | recall | F1 | support |" in card
    result = hftl.evaluate(r.output_dir)
    assert result["report"]["table"] in card
    _same_as_training(r.output_dir, result["members"][str(r.output_dir)])
    folder = r.output_dir / "eval"
    for name in ("metrics.json", "per_class.md", "confusion_matrix.png", "worst.jsonl"):
        assert (folder / name).is_file(), name
    rows = result["report"]["per_class"]
    assert [x["label"] for x in rows] == r.label_names and sum(x["support"] for x in rows) == len(r.trainer.eval_dataset)
    matrix = result["report"]["confusion"]
    acc = sum(matrix[i][i] for i in range(len(matrix))) / sum(map(sum, matrix))
    assert acc == pytest.approx(r.metrics["eval_accuracy"])
    worst = [json.loads(x) for x in (folder / "worst.jsonl").read_text().splitlines()]
    assert worst and worst == sorted(worst, key=lambda w: w["p_label"]) and "input" in worst[0]
    # the CLI on other labelled data in the recipe's format
    cli = subprocess.run([sys.executable, "-m", "hftl.cli", "eval", str(r.output_dir), "--data", str(text_csv[0]),
                          "--output", str(tmp_path / "on_train")], capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HFTL_LOG_LEVEL": "WARNING"})
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "eval_accuracy=" in cli.stdout and json.loads((tmp_path / "on_train" / "metrics.json").read_text())["examples"] > 0


def test_labels_the_run_never_saw_are_refused(text_recipe, tmp_path):
    r = hftl.train(text_recipe(training={"num_train_epochs": 1}))
    bad = tmp_path / "other.csv"
    bad.write_text("text,label\ngood movie,pos\nbad movie,neutral\n")
    with pytest.raises(HftlError, match="labels the run never saw.*neutral"):
        hftl.evaluate(r.output_dir, data=bad)
    with pytest.raises(HftlError, match="not an hftl output dir"):
        hftl.evaluate(tmp_path)


def test_image_eval_equals_metrics_json(image_recipe):
    r = hftl.train(image_recipe(training={"num_train_epochs": 1}))
    _same_as_training(r.output_dir, hftl.evaluate(r.output_dir)["members"][str(r.output_dir)])


def test_audio_eval_equals_metrics_json(w2v_dir, audio_dirs, tmp_path):
    from test_audio import audio_recipe

    r = hftl.train(audio_recipe(w2v_dir, audio_dirs, tmp_path, training={"num_train_epochs": 1}))
    # the Trainer's evaluation batch size: padded clips see the padding (this Wav2Vec2 takes no attention mask)
    result = hftl.evaluate(r.output_dir, batch_size=8)
    _same_as_training(r.output_dir, result["members"][str(r.output_dir)])


def test_ner_eval_equals_metrics_json(ner_recipe):  # noqa: F811
    r = hftl.train(ner_recipe(training={"num_train_epochs": 2}))
    result = hftl.evaluate(r.output_dir)
    _same_as_training(r.output_dir, result["members"][str(r.output_dir)])
    assert [x["label"] for x in result["report"]["per_class"]] == r.label_names  # per word tag


def test_an_ensemble_is_scored_beside_its_members(text_recipe, tmp_path):
    a = hftl.train(text_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "a")}))
    b = hftl.train(text_recipe(training={"num_train_epochs": 1, "output_dir": str(tmp_path / "b")}, seed=1))
    result = hftl.evaluate([a.output_dir, b.output_dir])
    assert set(result["members"]) == {str(a.output_dir), str(b.output_dir)}
    assert 0 <= result["ensemble"]["eval_accuracy"] <= 1
    table = (a.output_dir / "eval-ensemble" / "ensemble.md").read_text()
    assert "ensemble (mean probabilities)" in table and str(b.output_dir) in table
