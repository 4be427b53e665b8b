"""A run works wherever its files go: the output dir loaded with the ecosystem's standard loaders
(`pipeline`, the Auto classes, `AutoImageProcessor`/`AutoTokenizer`, `PeftModel`) reproduces the run's own
validation metrics (`metrics.json`), or refuses to load with an error that says how. Never silently different.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

import hftl
from conftest import FILLER, NEG, POS

FAST = {"num_train_epochs": 2, "learning_rate": 1e-2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def long_text_csv(tmp_path_factory) -> tuple[Path, Path]:
    """Texts of 8-30 words: with max_seq_length 16 many are cut, and the cue word may lie past the cut."""
    d = tmp_path_factory.mktemp("long-text")
    paths = []
    for name, n, seed in (("train", 96, 0), ("validation", 40, 1)):
        rng = random.Random(seed)
        rows = []
        for i in range(n):
            positive = i % 2 == 0
            words = [rng.choice(FILLER) for _ in range(rng.randint(6, 28))] + rng.sample(POS if positive else NEG, 2)
            rng.shuffle(words)
            rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
        p = d / f"{name}.csv"
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(rows)
        paths.append(p)
    return tuple(paths)


def validation_rows(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def run_accuracy(out: Path) -> float:
    return json.loads((out / "metrics.json").read_text())["eval_accuracy"]


def text_recipe_for(text_recipe, long_text_csv, **sections):
    return text_recipe(data={"train_file": str(long_text_csv[0]), "validation_file": str(long_text_csv[1]),
                             "max_seq_length": 16}, training=FAST, **sections)


def pipeline_accuracy(model_dir, texts, labels, **kwargs) -> float:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model_dir), truncation=True, **kwargs)
    predicted = [p["label"] for p in classify(texts)]
    return sum(p == y for p, y in zip(predicted, labels)) / len(labels)


@torch.no_grad()
def text_logits(model, tokenizer_dir, texts) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    return model.eval()(**batch).logits


def run_card_snippet(out: Path, image: Path | None = None) -> str:
    """Execute the card's "How to use" code as a user would (the image placeholder replaced); its printout."""
    import contextlib
    import io
    import re

    card = (out / "README.md").read_text()
    code = re.search(r"## How to use\n\n```python\n(.*?)\n```", card, re.S).group(1)
    assert f'model_id = "{out}"' in code
    if image is not None:
        code = code.replace('"path/to/image.jpg"', repr(str(image)))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "card", "exec"), {})
    return printed.getvalue()


# ------------------------------------------------------------------------------------------ text: full models


@pytest.mark.parametrize("pooling", ["default", "mean", "cls"])
def test_text_run_loads_in_plain_transformers(pooling, text_recipe, long_text_csv):
    from transformers import AutoModelForSequenceClassification

    result = hftl.train(text_recipe_for(text_recipe, long_text_csv, model={"pooling": pooling}))
    out = result.output_dir
    texts, labels = validation_rows(long_text_csv[1])
    remote = pooling != "default"
    assert (out / "hftl_pooling.py").is_file() == remote
    # The saved tokenizer cuts where the run did (so pipeline(..., truncation=True) sees the same tokens).
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 16

    assert pipeline_accuracy(out, texts, labels, trust_remote_code=remote) == pytest.approx(run_accuracy(out))
    plain = AutoModelForSequenceClassification.from_pretrained(str(out), trust_remote_code=remote)
    expected = text_logits(result.model, out, texts)
    assert (text_logits(plain, out, texts) - expected).abs().max() < 1e-5
    assert (text_logits(hftl.load_model(out), out, texts) - expected).abs().max() < 1e-5
    assert "'label': 'pos'" in run_card_snippet(out) or "'label': 'neg'" in run_card_snippet(out)
    if remote:
        # Without trust_remote_code transformers refuses (it does not put an untrained pooler back) and says how.
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            AutoModelForSequenceClassification.from_pretrained(str(out))


def test_pooled_checkpoints_load_and_resume(text_recipe, long_text_csv):
    """A checkpoint folder is a model too; and the Trainer still resumes from one whose config.json hftl changed."""
    from transformers import AutoModelForSequenceClassification

    recipe = hftl.load_recipe(text_recipe_for(text_recipe, long_text_csv, model={"pooling": "mean"}),
                              overrides=["training.save_strategy=epoch"])
    result = hftl.train(recipe)
    out = result.output_dir
    texts, _ = validation_rows(long_text_csv[1])
    first, last = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    expected = text_logits(result.model, out, texts)
    from_last = AutoModelForSequenceClassification.from_pretrained(str(last), trust_remote_code=True)
    assert (text_logits(from_last, out, texts) - expected).abs().max() < 1e-5
    resumed = hftl.train(recipe, overrides=[f"training.resume_from_checkpoint={first}", "overwrite_output_dir=true"])
    assert (text_logits(resumed.model, out, texts) - expected).abs().max() < 1e-5


def test_truncation_matters_for_these_texts(text_recipe, long_text_csv):
    """The control for the model_max_length check: without truncation the same pipeline predicts differently."""
    from transformers import pipeline

    out = hftl.train(text_recipe_for(text_recipe, long_text_csv), overrides=["training.num_train_epochs=1"]).output_dir
    texts, _ = validation_rows(long_text_csv[1])
    cut = pipeline("text-classification", model=str(out), truncation=True)(texts)
    full = pipeline("text-classification", model=str(out))(texts)
    assert [round(p["score"], 6) for p in cut] != [round(p["score"], 6) for p in full]


# ------------------------------------------------------------------------------------------ text: adapters


def test_lora_adapter_and_merged_model_load_in_plain_peft_and_transformers(text_recipe, long_text_csv, bert_dir):
    from peft import AutoPeftModelForSequenceClassification, PeftModel
    from transformers import AutoModelForSequenceClassification

    result = hftl.train(text_recipe_for(text_recipe, long_text_csv, peft={"method": "lora", "merge": True}))
    out = result.output_dir
    texts, labels = validation_rows(long_text_csv[1])
    expected = text_logits(result.model, out, texts)
    base = AutoModelForSequenceClassification.from_pretrained(str(bert_dir), num_labels=2)
    for model in (PeftModel.from_pretrained(base, str(out)), AutoPeftModelForSequenceClassification.from_pretrained(str(out))):
        assert (text_logits(model, out, texts) - expected).abs().max() < 1e-5
    assert "'label': 'pos'" in run_card_snippet(out) or "'label': 'neg'" in run_card_snippet(out)
    merged = out / "merged"
    assert pipeline_accuracy(merged, texts, labels) == pytest.approx(run_accuracy(out))
    # Merging adds the low-rank update into the weights: float32 rounding, not a different model.
    assert (text_logits(AutoModelForSequenceClassification.from_pretrained(str(merged)), merged, texts)
            - expected).abs().max() < 5e-4


def test_mean_pooled_lora_merged_model_carries_its_pooling(text_recipe, long_text_csv, bert_dir):
    from transformers import AutoModelForSequenceClassification

    result = hftl.train(text_recipe_for(text_recipe, long_text_csv, model={"pooling": "mean"},
                                        peft={"method": "lora", "merge": True}))
    out = result.output_dir
    texts, labels = validation_rows(long_text_csv[1])
    merged = out / "merged"
    assert pipeline_accuracy(merged, texts, labels, trust_remote_code=True) == pytest.approx(run_accuracy(out))
    expected = text_logits(result.model, out, texts)  # the run's tokenizer: cut at max_seq_length
    model = AutoModelForSequenceClassification.from_pretrained(str(merged), trust_remote_code=True)
    assert (text_logits(model, merged, texts) - expected).abs().max() < 5e-4
    assert (text_logits(hftl.load_model(out), out, texts) - expected).abs().max() < 1e-5
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card and "hftl.load_model(model_id)" in card
    assert "'label': " in run_card_snippet(out)


def test_pushing_a_pooled_adapter_alone_is_refused_before_training(text_recipe, long_text_csv):
    """PEFT's loaders put the adapter on the base model's own pooler: a mean-pooled adapter alone cannot be
    loaded right by anyone downloading it, so it is not pushed alone."""
    recipe = text_recipe_for(text_recipe, long_text_csv, model={"pooling": "mean"}, peft={"method": "lora"},
                             hub={"push": True, "repo_id": "alice/x"})
    with pytest.raises(hftl.HftlError) as err:
        hftl.train(recipe)
    msg = str(err.value)
    assert "'hub.upload'" in msg and "mean pooling" in msg and "peft.merge: true" in msg
    assert not Path(recipe["training"]["output_dir"]).exists()


# ------------------------------------------------------------------------------------------ images


def image_accuracy(out: Path, image_dir: Path) -> tuple[float, float]:
    """(Auto classes, pipeline) accuracy on an image folder, loaded the way every transformers user does."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    files = sorted(image_dir.glob("*/*.png"))
    truth = [f.parent.name for f in files]
    images = [Image.open(f).convert("RGB") for f in files]
    processor = AutoImageProcessor.from_pretrained(str(out))
    model = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        ids = model(**processor(images=images, return_tensors="pt")).logits.argmax(-1).tolist()
    auto = sum(model.config.id2label[i] == t for i, t in zip(ids, truth)) / len(files)
    classify = pipeline("image-classification", model=str(out))
    top = [p[0]["label"] for p in classify(images)]
    return auto, sum(p == t for p, t in zip(top, truth)) / len(files)


@pytest.fixture(scope="module")
def timm_dir(tmp_path_factory) -> Path:
    """A timm ResNet through transformers' TimmWrapper: 32 px, centre crop 0.875, like a timm Hub checkpoint."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    d = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    config = TimmWrapperConfig(architecture="resnet10t", num_labels=3, pretrained_cfg={
        "input_size": [3, 32, 32], "mean": [0.45, 0.45, 0.45], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
        "crop_pct": 0.875, "crop_mode": "center", "num_classes": 3})
    TimmWrapperForImageClassification(config).save_pretrained(d)
    return d


@pytest.mark.parametrize("image_size", [None, 24], ids=["checkpoint-size", "image_size-24"])
@pytest.mark.parametrize("family", ["transformers", "timm"])
def test_image_run_loads_in_plain_transformers(family, image_size, image_recipe, image_dirs, resnet_dir, timm_dir):
    model_dir = resnet_dir if family == "transformers" else timm_dir
    data = {"image_size": image_size} if image_size else {}
    result = hftl.train(image_recipe(model_dir=model_dir, data=data, training=FAST))
    out = result.output_dir
    auto, piped = image_accuracy(out, image_dirs[1])
    assert auto == pytest.approx(run_accuracy(out)) and piped == pytest.approx(run_accuracy(out))
    assert "'label': " in run_card_snippet(out, image=next(image_dirs[1].glob("*/*.png")))
    if image_size and family == "timm":
        cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
        assert cfg["input_size"] == [3, 24, 24] and cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "squash"
    elif image_size:
        pre = json.loads((out / "preprocessor_config.json").read_text())
        assert pre["size"] == {"height": 24, "width": 24} and not pre.get("do_center_crop")
