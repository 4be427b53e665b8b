"""Few-shot: hftl against SetFit at a handful of labelled examples per class (issue 35).

Tweets (all-MiniLM-L6-v2, binary sentiment): k = 8, 16, 32, 64 examples per class, each a seeded sample of the
2,000 training tweets (seeds 0..4, the same rows for every system), scored on the published 1,000 validation
tweets. Fashion-MNIST (EfficientNet-Lite0 at 96 px): k = 5, 10, 20 images per class from the 1k training images,
scored on the 1,000 validation images. Rows:

- `setfit`: SetFit 1.2 with its defaults (`SetFitModel.from_pretrained` on the same MiniLM folder, `Trainer` +
  `TrainingArguments()`, logistic-regression head), text only. SetFit is not an hftl dependency: it is installed
  beside the venv (`pip install --no-deps --target /tmp/setfit_pkgs setfit==1.2.0`; sentence-transformers, its
  one missing requirement, is in the lock) and its rows run in a subprocess with that folder on PYTHONPATH.
- `feature_extraction`: frozen backbone, the head trained by the Trainer (head lr 1e-2, 10 epochs, cached features).
- `full`: full fine-tuning, 10 epochs (the demo's 2 give these sizes a handful of steps), at the quality scripts'
  rates: 5e-5 for MiniLM (quality_text.py), 1e-3 for EfficientNet (quality_image.py).
- `contrastive`: the new block -- contrastive body tuning (SetFit's pairs and loss, num_iterations 20) + the head
  fitted by L-BFGS (`strategy.head_fit: lbfgs`).
- `auto`: `strategy.preset: auto`, nothing else set: what a user gets by default.

Nothing is tuned on the validation rows: every setting is fixed beforehand (SetFit's defaults, hftl's block
defaults). Accuracy and macro-F1 on the validation split; training time = the system's own training (SetFit:
`trainer.train()`; hftl: contrastive tuning + head fit or the Trainer's train_runtime), model loading excluded.

    .venv/bin/python benchmarks/fewshot.py                      # everything (~1-2 h on 2 cores)
    .venv/bin/python benchmarks/fewshot.py --only tweets/16 --seeds 0   # a part; rows accumulate in the .json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, load_rows, md_table, merge, save_rows, selected, write_result

NAME = "fewshot"
SETFIT_PATH = os.environ.get("SETFIT_PATH", "/tmp/setfit_pkgs")
TWEET_SHOTS, IMAGE_SHOTS, SEEDS = (8, 16, 32, 64), (5, 10, 20), (0, 1, 2, 3, 4)

TEXT = {
    "task": "text-classification",
    "model": {"model_name_or_path": "zoo:minilm-l6", "pooling": "auto"},
    "data": {"max_seq_length": 64},
    "training": {"learning_rate": 5e-5, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 128,
                 "eval_strategy": "no", "save_strategy": "no", "logging_steps": 10, "dataloader_num_workers": 0},
    "overwrite_output_dir": True,
}
IMAGE = {
    "task": "image-classification",
    "model": {"model_name_or_path": "zoo:efficientnet-lite0"},
    "data": {"image_size": 96, "augment": False},
    "training": {"learning_rate": 1e-3, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 128,
                 "eval_strategy": "no", "save_strategy": "no", "logging_steps": 10, "dataloader_num_workers": 0},
    "overwrite_output_dir": True,
}
SYSTEMS = {
    "feature_extraction": ("hftl feature extraction (head lr 1e-2, 10 epochs)",
                           {"strategy": {"preset": "feature_extraction"},
                            "training": {"learning_rate": 1e-2, "num_train_epochs": 10}}),
    "full": ("hftl full fine-tuning (10 epochs; lr 5e-5 text, 1e-3 images)",
             {"strategy": {"preset": "full"}, "training": {"num_train_epochs": 10}}),
    "contrastive": ("hftl contrastive body + L-BFGS head",
                    {"strategy": {"freeze": "none", "head_fit": "lbfgs"}, "contrastive": {}}),
    "auto": ("hftl `preset: auto`", {"strategy": {"preset": "auto"}}),
}


def sample(labels: list[int], k: int, seed: int) -> list[int]:
    """k row indices per class, a seeded sample (the same rows for every system)."""
    import random

    rng = random.Random(seed)
    out = []
    for c in sorted(set(labels)):
        rows = [i for i, y in enumerate(labels) if y == c]
        out += rng.sample(rows, k)
    return sorted(out)


def tweet_files(k: int, seed: int, folder: Path) -> tuple[Path, Path]:
    from hftl.zoo.datasets import DATASETS

    ds = DATASETS["tweets-sentiment"]("binary")
    train, val = ds["train"], ds["validation"]
    picked = train.select(sample(train["label"], k, seed))
    names = train.features["label"].names
    paths = []
    for part, rows in (("train", picked), ("validation", val)):
        path = folder / f"{part}.jsonl"
        with path.open("w") as f:
            for r in rows:
                f.write(json.dumps({"text": r["text"], "label": names[r["label"]]}) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def image_dirs(k: int, seed: int, folder: Path) -> tuple[Path, Path]:
    from hftl.zoo.datasets import DATASETS

    ds = DATASETS["fashion-mnist"]("1k")
    train, val = ds["train"], ds["validation"]
    names = train.features["label"].names
    picked = train.select(sample(train["label"], k, seed))
    paths = []
    for part, rows in (("train", picked), ("validation", val)):
        root = folder / part
        for i, r in enumerate(rows):
            d = root / names[r["label"]].replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            r["image"].save(d / f"{i}.png")
        paths.append(root)
    return paths[0], paths[1]


def hftl_row(base: dict, data: dict, system: str, out: str, seed: int) -> dict:
    import hftl

    recipe = merge(merge(base, SYSTEMS[system][1]), {"data": data, "seed": seed, "training": {"output_dir": out}})
    start = time.perf_counter()
    result = hftl.train(recipe)
    wall = time.perf_counter() - start
    m = result.metrics
    train_s = (m.get("contrastive_seconds") or 0) + (m.get("train_runtime") or 0)
    decision = result.plan.decision.choice if result.plan.decision is not None else None
    return {"accuracy": m["eval_accuracy"], "f1": m["eval_f1_macro"], "train_s": round(train_s, 1),
            "wall_s": round(wall, 1), "auto_choice": decision}


SETFIT_SCRIPT = r"""
import json, sys, time
from datasets import load_dataset
from setfit import SetFitModel, Trainer, TrainingArguments
from sklearn.metrics import accuracy_score, f1_score
model_dir, train_file, val_file, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data = load_dataset("json", data_files={"train": train_file, "validation": val_file})
names = sorted(set(data["train"]["label"]))
data = data.map(lambda r: {"label": names.index(r["label"])})
model = SetFitModel.from_pretrained(model_dir)
import tempfile
args = TrainingArguments(seed=seed, output_dir=tempfile.mkdtemp())  # the defaults; checkpoints off the repo
trainer = Trainer(model=model, args=args, train_dataset=data["train"])
start = time.perf_counter()
trainer.train()
train_s = time.perf_counter() - start
pred = model.predict(data["validation"]["text"], batch_size=128)
y = data["validation"]["label"]
pred = [int(p) for p in pred]
print("RESULT " + json.dumps({"accuracy": accuracy_score(y, pred), "f1": f1_score(y, pred, average="macro"),
                             "train_s": round(train_s, 1)}))
"""


def setfit_row(train_file: Path, val_file: Path, seed: int) -> dict:
    from hftl.zoo import resolve_model

    env = {**os.environ, "PYTHONPATH": SETFIT_PATH, "TRANSFORMERS_VERBOSITY": "error"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SETFIT_SCRIPT, resolve_model("zoo:minilm-l6"), str(train_file),
                           str(val_file), str(seed)], env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"SetFit failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(line[len("RESULT "):]), "wall_s": round(time.perf_counter() - start, 1)}


def measure(rows: dict, only, seeds, systems, keep: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="fewshot_"))
    plans = [("tweets", k) for k in TWEET_SHOTS] + [("fashion", k) for k in IMAGE_SHOTS]
    for dataset, k in plans:
        for seed in seeds:
            names = [s for s in (("setfit",) if dataset == "tweets" else ()) + tuple(SYSTEMS) if s in systems]
            todo = [s for s in names if selected(f"{dataset}/{k}/{seed}/{s}", only)
                    and f"{dataset}/{k}/{seed}/{s}" not in rows]
            if not todo:
                continue
            folder = work / f"{dataset}_{k}_{seed}"
            folder.mkdir()
            if dataset == "tweets":
                train, val = tweet_files(k, seed, folder)
                data, base = {"train_file": str(train), "validation_file": str(val)}, TEXT
            else:
                train, val = image_dirs(k, seed, folder)
                data, base = {"train_dir": str(train), "validation_dir": str(val)}, IMAGE
            for system in todo:
                key = f"{dataset}/{k}/{seed}/{system}"
                print(f"\n=== {key}", flush=True)
                if system == "setfit":
                    row = setfit_row(train, val, seed)
                else:
                    row = hftl_row(base, data, system, str(folder / system), seed)
                print(json.dumps(row), flush=True)
                rows[key] = row
                save_rows(NAME, rows, keep)


def report(rows: dict) -> str:
    def cell(values):
        if not values:
            return "-"
        mean = statistics.mean(values)
        return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"

    out = []
    for dataset, shots, title in (("tweets", TWEET_SHOTS, "Tweets, all-MiniLM-L6-v2 (1,000 validation tweets)"),
                                  ("fashion", IMAGE_SHOTS, "Fashion-MNIST, EfficientNet-Lite0 96 px (1,000 "
                                                           "validation images)")):
        systems = (["setfit"] if dataset == "tweets" else []) + list(SYSTEMS)
        table = []
        for system in systems:
            label = "SetFit 1.2 (defaults)" if system == "setfit" else SYSTEMS[system][0]
            line = [label]
            for k in shots:
                got = [rows[key] for seed in SEEDS if (key := f"{dataset}/{k}/{seed}/{system}") in rows]
                acc = cell([r["accuracy"] for r in got])
                f1 = cell([r["f1"] for r in got])
                secs = f"{statistics.mean(r['train_s'] for r in got):.0f} s" if got else "-"
                line.append(f"{acc} (F1 {f1}; {secs}; n={len(got)})" if got else "-")
            table.append(line)
        out += [f"## {title}", "", "Accuracy mean ± standard deviation over the seeded samples (macro-F1; mean "
                "training time; samples).", "",
                md_table(["system"] + [f"{k} / class" for k in shots], table), ""]
        choices = sorted({f"{k}: {r['auto_choice']}" for key, r in rows.items()
                          if key.startswith(dataset) and key.endswith("/auto") for k in [key.split("/")[1]]})
        if choices:
            out += ["`auto` chose: " + "; ".join(choices) + ".", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated parts of row keys (dataset/k/seed/system)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--systems", default=",".join(("setfit", *SYSTEMS)))
    parser.add_argument("--fresh", action="store_true", help="forget the stored rows")
    args = parser.parse_args()
    rows = load_rows(NAME, not args.fresh)
    only = args.only.split(",") if args.only else None
    measure(rows, only, [int(s) for s in args.seeds.split(",")], args.systems.split(","), True)
    write_result(NAME, "Few-shot: hftl against SetFit", report(rows))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
