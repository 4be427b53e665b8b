"""audio-classification end to end: Wav2Vec2 on raw clips (feature encoder frozen, any sampling rate) and an
image backbone on log-mel spectrograms; from Python, the CLI and `accelerate launch`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import soundfile as sf
import torch
import yaml

import hftl
from conftest import SR
from hftl.errors import HftlError

def resave(src, dst, sr: int):
    """The same clips at another sampling rate (soxr), same names."""
    from hftl.tasks.audio_io import load_clip

    for p in sorted(src.rglob("*.wav")):
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(out, load_clip(str(p), sr), sr)
    return dst


def audio_recipe(model_dir, dirs, tmp_path, **sections):
    from conftest import merge_sections

    recipe = {
        "task": "audio-classification",
        "model": {"model_name_or_path": str(model_dir)},
        "data": {"train_dir": str(dirs[0]), "validation_dir": str(dirs[1])},
        "training": {"output_dir": str(tmp_path / "out"), "num_train_epochs": 4, "learning_rate": 3e-3,
                     "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "logging_steps": 2,
                     "save_strategy": "no", "dataloader_num_workers": 0},
        "seed": 0,
    }
    return merge_sections(recipe, sections)


def _feature_encoder(state: dict) -> dict:
    return {n: t for n, t in state.items() if ".feature_extractor." in n}


def test_wav2vec2_learns_with_the_feature_encoder_frozen(w2v_dir, audio_dirs, tmp_path, one_thread):
    from transformers import AutoModelForAudioClassification

    base = AutoModelForAudioClassification.from_pretrained(w2v_dir).state_dict()
    r = hftl.train(audio_recipe(w2v_dir, audio_dirs, tmp_path, data={"max_duration_seconds": 0.4}))
    assert r.metrics["eval_accuracy"] >= 0.9, r.metrics
    end = r.model.state_dict()
    frozen = _feature_encoder(end)
    assert frozen and all(torch.equal(t, base[n]) for n, t in frozen.items())  # bit-identical
    assert not torch.equal(end["classifier.weight"], base["classifier.weight"])
    assert any(not torch.equal(end[n], base[n]) for n in end if ".encoder.layers." in n)
    # the plan: the conv feature encoder is its own depth 0, frozen for the whole run
    lm = r.plan.layer_map
    assert lm.labels[:2] == ["feature_extractor.conv_layers", "embeddings"] and lm.input_depths == 2
    assert {lm.depth[n] for n in lm.depth if ".feature_extractor." in n} == {0}
    row = next(line for line in r.plan.table().splitlines() if line.startswith("| 0 |"))
    assert "| frozen |" in row and row.endswith("| never |")
    out = r.output_dir
    for name in ("model.safetensors", "preprocessor_config.json", "labels.json", "README.md", "curves.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.json").read_text()) == ["high", "low"]


def test_clips_at_another_sampling_rate_score_the_same(w2v_dir, audio_dirs, tmp_path, one_thread):
    """Each clip is resampled to the feature extractor's rate: 8 kHz copies predict like the 16 kHz originals."""
    from datasets import Dataset
    from transformers import AutoFeatureExtractor

    from hftl.tasks import get_task

    recipe = hftl.load_recipe(audio_recipe(w2v_dir, audio_dirs, tmp_path))
    r = hftl.train(recipe)
    model, task = hftl.load_model(r.output_dir), get_task("audio-classification")
    fe = AutoFeatureExtractor.from_pretrained(r.output_dir)
    low = resave(audio_dirs[1], tmp_path / "8k", 8000)
    assert sf.info(str(next(low.rglob("*.wav")))).samplerate == 8000

    def predict(folder):
        paths = sorted(str(p) for p in folder.rglob("*.wav"))
        ds = task.prepare_inputs(Dataset.from_dict({"audio": paths}), fe, recipe.data)
        with torch.no_grad():
            return torch.cat([model(**r.trainer.data_collator([ds[i]])).logits for i in range(len(ds))]), paths

    original, paths = predict(audio_dirs[1])
    resampled, _ = predict(low)
    truth = torch.tensor([0 if "/high/" in p else 1 for p in paths])
    assert (original.argmax(-1) == resampled.argmax(-1)).all()
    assert (original.argmax(-1) == truth).float().mean() == (resampled.argmax(-1) == truth).float().mean()
    assert (original.argmax(-1) == truth).float().mean() >= 0.9
    # unlabelled inputs (prediction) get the trained model's own output on the evaluation inputs
    trained = r.model.eval()
    with torch.no_grad():
        evaluated = torch.cat([trained(**{k: v for k, v in r.trainer.data_collator([r.trainer.eval_dataset[i]]).items()
                                          if k != "labels"}).logits for i in range(len(paths))])
    assert torch.allclose(evaluated, original, atol=1e-5)


def test_wav2vec2_discriminative_lr_and_gradual_unfreezing_reach_the_feature_encoder(w2v_dir, audio_dirs, tmp_path,
                                                                                       one_thread):
    from transformers import AutoModelForAudioClassification

    base = AutoModelForAudioClassification.from_pretrained(w2v_dir).state_dict()
    recipe = audio_recipe(
        w2v_dir, audio_dirs, tmp_path, model={"freeze_feature_encoder": False},
        strategy={"discriminative_lr": {"layer_decay": 0.5}, "gradual_unfreezing": {"every_steps": 1}},
        training={"max_steps": 8, "learning_rate": 1e-3})
    r = hftl.train(recipe)
    lm = r.plan.layer_map
    names = dict(r.model.named_parameters())
    filled = set(lm.depth.values()) | {lm.head_depth}  # decay steps count the depths that hold parameters
    for group in r.trainer.optimizer.param_groups:
        for n in group["param_names"]:
            steps = sum(lm.depth[n] < d <= lm.head_depth for d in filled)
            assert group["initial_lr"] == pytest.approx(1e-3 * 0.5 ** steps), n
    assert {lm.depth[n] for n in names if ".feature_extractor." in n} == {0}
    # unfrozen one depth per step from the head down: by step 6 the conv encoder trains too
    changed = {n for n, t in r.model.state_dict().items() if n in base and not torch.equal(t, base[n])}
    assert any(".feature_extractor." in n for n in changed)


def test_freeze_feature_encoder_on_a_model_without_one(resnet_dir, audio_dirs, tmp_path):
    recipe = audio_recipe(resnet_dir, audio_dirs, tmp_path, model={"freeze_feature_encoder": True},
                          data={"audio_features": "log_mel", "max_duration_seconds": 0.5})
    with pytest.raises(HftlError, match="model.freeze_feature_encoder"):
        hftl.train(recipe)
    assert not (tmp_path / "out").exists()


def test_log_mel_spectrograms_train_an_image_model(resnet_dir, audio_dirs, tmp_path, one_thread):
    from transformers import AutoImageProcessor

    from hftl.tasks.audio_classification import clip_image

    recipe = audio_recipe(resnet_dir, audio_dirs, tmp_path,
                          data={"audio_features": "log_mel", "max_duration_seconds": 0.5,
                                "spectrogram": {"n_mels": 32, "hop_length": 320}},
                          training={"num_train_epochs": 5, "learning_rate": 1e-2})
    r = hftl.train(recipe)
    assert r.metrics["eval_accuracy"] >= 0.9, r.metrics
    assert type(r.model).__name__ == "ResNetForImageClassification"
    pixels = r.trainer.eval_dataset[0]["pixel_values"]
    assert tuple(pixels.shape) == (3, 32, 1 + 8000 // 320)  # n_mels x frames, no crop
    # the saved processor + the run's log-mel settings reproduce the evaluation inputs outside the Trainer
    saved = AutoImageProcessor.from_pretrained(r.output_dir)
    data = hftl.load_recipe(r.output_dir / "recipe.yaml").data
    first = sorted(str(p) for p in audio_dirs[1].rglob("*.wav"))[0]
    again = saved(images=[clip_image(first, data)], return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(again, pixels, atol=1e-6)
    # the card's "How to use" runs as written
    card = (r.output_dir / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0].replace("path/to/clip.wav", first)
    code = code.replace(f'model_id = "{recipe["training"]["output_dir"]}"', f'model_id = "{r.output_dir}"')
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() in ("high", "low")


@pytest.mark.slow
def test_cli_and_accelerate_launch(w2v_dir, audio_dirs, tmp_path):
    from conftest import ROOT, child_env
    from test_distributed import ACCELERATE

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(audio_recipe(w2v_dir, audio_dirs, tmp_path, training={"max_steps": 2})))
    cli = subprocess.run([sys.executable, "-m", "hftl.cli", "train", str(path), "overwrite_output_dir=true"],
                         capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "eval_accuracy" in json.loads((tmp_path / "out" / "metrics.json").read_text())
    launched = subprocess.run(
        [*ACCELERATE, "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(ROOT / "hftl" / "run.py"), str(path), "overwrite_output_dir=true", "training.max_steps=3"],
        capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["epoch"] > 0


@pytest.mark.parametrize("source", ["csv_of_relative_paths", "datasets_audio_column"])
def test_audio_from_files_and_datasets(source, w2v_dir, audio_dirs, tmp_path, one_thread):
    """A csv/jsonl path column (relative to the file) and a datasets `Audio` column (read as bytes, never
    decoded through datasets' torchcodec path) train like the audiofolder layout."""
    import csv
    import shutil

    from datasets import Audio, Dataset, DatasetDict

    root = tmp_path / "data"
    splits = {}
    for split, folder in (("train", audio_dirs[0]), ("validation", audio_dirs[1])):
        shutil.copytree(folder, root / split)
        splits[split] = sorted(p.relative_to(root) for p in (root / split).rglob("*.wav"))
    if source == "csv_of_relative_paths":
        for split, paths in splits.items():
            with open(root / f"{split}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["file", "label"])
                w.writerows([str(p), p.parent.name] for p in paths)
        data = {"train_file": str(root / "train.csv"), "validation_file": str(root / "validation.csv"),
                "audio_column_name": "file"}
    else:
        DatasetDict({split: Dataset.from_dict({"file": [str(root / p) for p in paths],
                                               "label": [p.parent.name for p in paths]}).cast_column("file", Audio())
                     for split, paths in splits.items()}).save_to_disk(str(tmp_path / "saved"))
        shutil.rmtree(root)  # the saved dataset holds the bytes
        data = {"dataset_name": str(tmp_path / "saved"), "audio_column_name": "file"}
    recipe = audio_recipe(w2v_dir, audio_dirs, tmp_path, data=data)
    recipe["data"] = data
    r = hftl.train(recipe)
    assert r.metrics["eval_accuracy"] >= 0.9, r.metrics
    assert r.label_names == ["high", "low"]
