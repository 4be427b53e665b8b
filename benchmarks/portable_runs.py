"""A run loaded the plain transformers way: accuracy of `hftl.load_model` vs `pipeline(...)` / the Auto classes.

Two shipped-recipe runs on the real offline models (the cases a user found wrong):
- `recipes/gradual_unfreezing.yaml` (all-MiniLM-L6-v2, mean pooling) on the 1,000 validation tweets:
  `pipeline("text-classification", model=run, trust_remote_code=True, truncation=True)`, and a plain
  `AutoModelForSequenceClassification.from_pretrained(run)` (refused: the pooling ships as code);
- `recipes/image_demo.yaml` with `zoo:efficientnet-lite0` at `data.image_size=128` on the 1,000 Fashion-MNIST
  test images: `AutoImageProcessor` + `AutoModelForImageClassification`, and `pipeline("image-classification")`.

    .venv/bin/python benchmarks/portable_runs.py            # ~10 min on 2 cores
    .venv/bin/python benchmarks/portable_runs.py --epochs 0.1   # smoke run, nothing written
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import ROOT, md_table, write_result


def text_row(out: Path) -> list:
    from transformers import AutoModelForSequenceClassification, pipeline

    from hftl import zoo

    val = zoo.load_dataset("zoo:tweets-sentiment", None)["validation"]
    names = val.features["label"].names
    truth = [names[i] for i in val["label"]]
    texts = list(val["text"])  # datasets 5 returns a Column, pipeline() wants a list
    classify = pipeline("text-classification", model=str(out), trust_remote_code=True, truncation=True, batch_size=64)
    predicted = [p["label"] for p in classify(texts)]
    plain = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    try:
        AutoModelForSequenceClassification.from_pretrained(str(out))
        refused = "no: loaded"
    except ValueError as e:
        refused = "yes: " + ("asks for trust_remote_code=True" if "trust_remote_code=True" in str(e) else str(e)[:60])
    return ["gradual_unfreezing (MiniLM, mean pooling)", "tweets validation (1,000)",
            json.loads((out / "metrics.json").read_text())["eval_accuracy"], plain,
            "pipeline(trust_remote_code=True, truncation=True)", refused]


def image_row(out: Path) -> list:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    from hftl import zoo

    val = zoo.load_dataset("zoo:fashion-mnist", None)["validation"]
    names = val.features["label"].names
    images, truth = [im.convert("RGB") for im in list(val["image"])], [names[i] for i in list(val["label"])]
    processor = AutoImageProcessor.from_pretrained(str(out))
    model = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    predicted = []
    with torch.no_grad():
        for i in range(0, len(images), 128):
            ids = model(**processor(images=images[i:i + 128], return_tensors="pt")).logits.argmax(-1).tolist()
            predicted += [model.config.id2label[j] for j in ids]
    auto = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    top = [p[0]["label"] for p in pipeline("image-classification", model=str(out), batch_size=128)(images)]
    piped = sum(p == t for p, t in zip(top, truth)) / len(truth)
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    return ["image_demo, zoo:efficientnet-lite0, image_size 128", "Fashion-MNIST test (1,000)",
            json.loads((out / "metrics.json").read_text())["eval_accuracy"], auto,
            f"AutoImageProcessor + Auto model (pipeline: {piped:.3f})",
            f"pretrained_cfg input_size {cfg['input_size'][1:]}, crop_pct {cfg['crop_pct']}, {cfg['crop_mode']}"]


def main() -> None:
    import hftl

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=float, default=None, help="override num_train_epochs (smoke runs: nothing written)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("gradual_unfreezing", [], text_row),
                ("image_demo", ["model.model_name_or_path=zoo:efficientnet-lite0", "data.image_size=128"], image_row)]
        for name, overrides, row in runs:
            out = Path(tmp) / name
            extra = [f"training.num_train_epochs={args.epochs}"] if args.epochs else []
            start = time.monotonic()
            hftl.train(ROOT / "recipes" / f"{name}.yaml",
                       overrides=[*overrides, *extra, f"training.output_dir={out}", "training.save_strategy=no"])
            rows.append([*row(out), f"{time.monotonic() - start:.0f} s"])
            print(md_table(["run", "data", "hftl (metrics.json)", "plain load", "how", "plain load without hftl's code",
                            "train + check"], rows[-1:]), flush=True)
    body = md_table(["run", "data", "hftl (metrics.json)", "plain load", "how", "plain load without hftl's code",
                     "train + check"], rows)
    write_result("portable_runs", "Runs loaded the plain transformers way", body, save=args.epochs is None)


if __name__ == "__main__":
    main()
