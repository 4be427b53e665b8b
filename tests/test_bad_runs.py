"""Bad input to the commands that use a finished run (`hftl predict`, `hftl eval`, `hftl export`): exit code 1,
one paragraph naming what is wrong, no traceback, nothing half-written."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import hftl


def _hftl(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "hftl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                     "HFTL_LOG_LEVEL": "WARNING"})
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    message = proc.stderr.split("hftl: error: ", 1)[1].strip()
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def runs(tmp_path_factory, bert_dir, vit_dir, text_csv, image_dirs):
    from conftest import merge_sections

    d = tmp_path_factory.mktemp("runs")
    common = {"training": {"num_train_epochs": 1, "save_strategy": "no", "per_device_train_batch_size": 8}, "seed": 0}
    text = hftl.train(merge_sections({"task": "text-classification", "model": {"model_name_or_path": str(bert_dir)},
                                      "data": {"train_file": str(text_csv[0]), "validation_file": str(text_csv[1])},
                                      **common}, {"training": {**common["training"], "output_dir": str(d / "text")}}))
    image = hftl.train(merge_sections({"task": "image-classification", "model": {"model_name_or_path": str(vit_dir)},
                                       "data": {"train_dir": str(image_dirs[0]), "validation_dir": str(image_dirs[1])},
                                       **common}, {"training": {**common["training"], "output_dir": str(d / "image")}}))
    return {"text": text.output_dir, "image": image.output_dir, "dir": d}


def test_a_folder_that_is_not_a_run(runs, tmp_path):
    assert "not an hftl output dir" in _hftl("predict", tmp_path, "hello", cwd=tmp_path)
    assert "not an hftl output dir" in _hftl("eval", tmp_path, cwd=tmp_path)


def test_an_input_of_the_wrong_kind(runs, tmp_path, audio_dirs):
    clip = next(audio_dirs[1].rglob("*.wav"))
    message = _hftl("predict", runs["image"], clip, cwd=tmp_path)
    assert str(clip) in message and "image-classification" in message and ".png" in message
    assert "literal text" in _hftl("predict", runs["image"], "a cat on a mat", cwd=tmp_path)


def test_labels_the_run_never_saw(runs, tmp_path):
    data = tmp_path / "new.csv"
    data.write_text("text,label\ngood day,pos\nmeh,neutral\n")
    message = _hftl("eval", runs["text"], "--data", data, "--output", tmp_path / "eval", cwd=tmp_path)
    assert "never saw" in message and "neutral" in message
    assert not (tmp_path / "eval").exists()


def test_ensemble_members_with_different_labels(runs, tmp_path):
    message = _hftl("predict", runs["text"], runs["image"], "hello", cwd=tmp_path)
    assert "must share the task and labels" in message
    assert "must share" in _hftl("eval", runs["text"], runs["image"], cwd=tmp_path)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_weights_missing_or_truncated(damage, runs, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(runs["text"], broken)
    weights = broken / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    message = _hftl("predict", broken, "hello", cwd=tmp_path)
    assert "model.safetensors" in message or "weights" in message


def test_int8_with_nothing_to_quantize(resnet_dir, image_dirs, tmp_path):
    r = hftl.train({"task": "image-classification", "model": {"model_name_or_path": str(resnet_dir)},
                    "data": {"train_dir": str(image_dirs[0]), "validation_dir": str(image_dirs[1])},
                    "training": {"output_dir": str(tmp_path / "resnet"), "max_steps": 1, "save_strategy": "no"}})
    message = _hftl("export", r.output_dir, "--int8", cwd=tmp_path)
    assert "othing to quantize" in message
    assert not (r.output_dir / "exported-int8").exists()
