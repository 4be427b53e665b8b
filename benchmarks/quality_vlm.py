"""Vision-language fine-tuning (`task: image-text-to-text`) of a model assembled offline, on CPU.

The model: `zoo:efficientnet-smollm2` -- EfficientNet-Lite0 (ImageNet-1k) as the vision tower at 128 px (16 image
tokens), a new seeded projector, SmolLM2-135M-Instruct as the language model (transformers' FastVLM architecture).
Untrained as a pair: the language model cannot see yet.

One training mixture of TRL rows (messages + images), LLaVA-style, from three sources:
- "What is this?" about Tux Paint's stamps (`zoo:stamps`, 6 categories; answer: the category, e.g. "birds"),
- "What is this?" about Fashion-MNIST (`zoo:fashion-mnist`; answer: the class name, e.g. "Ankle boot"),
- "Describe this stamp." (`zoo:stamps-captions`, config describe; answer: the stamp's English description); its
  training stamps whose pixels are among zoo:stamps' validation stamps are left out, so no validation image is seen.
Trained in LLaVA's two stages: (1) the projector alone (`model.freeze_language_model: true`), (2) from there, the
projector and LoRA on the language model (r 16). The vision tower stays frozen throughout.

Scored on the published held-out rows (greedy decoding): (a) answer accuracy (the class word in the generated
answer, case-insensitive) on zoo:stamps' validation split and the first rows of Fashion-MNIST's test split, against
a linear probe (scikit-learn logistic regression, C = 1) on the same frozen vision tower's pooled features from the
same training images (what `image-classification` with a frozen backbone learns); (b) ROUGE-L of "Describe this
stamp." against the English description on stamps-captions' validation split, trained vs the untrained assembly.

Nothing is tuned: the settings are fixed in this file (stage 1 lr 1e-3, stage 2 lr 5e-4, cosine, one epoch each,
batch 8; answers greedy, at most 24 new tokens). Each run writes its output dir under a temporary folder.

    .venv/bin/python benchmarks/quality_vlm.py                 # every row (see the time in the table's notes)
    .venv/bin/python benchmarks/quality_vlm.py --smoke         # a few rows of each (results not written)

Prints a markdown table and writes it to benchmarks/results/quality_vlm.md (numbers: quality_vlm.json). Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from common import md_table, write_result

import hftl

WHAT = "What is this?"
DESCRIBE = "Describe this stamp."
BASE = {"task": "image-text-to-text", "model": {"model_name_or_path": "zoo:efficientnet-smollm2"},
        "data": {"max_seq_length": 128}, "generation": {"temperature": 0, "max_new_tokens": 24},
        "training": {"num_train_epochs": 1, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
                     "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "logging_steps": 10, "save_strategy": "no",
                     "eval_strategy": "no", "dataloader_num_workers": 0}, "seed": 0}


def row(image_path: str, question: str, answer: str | None) -> dict:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return {"messages": messages, "images": [image_path]}


def save_images(ds, folder: Path, prefix: str, column: str = "image") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(ds[column]):
        image = image[0] if isinstance(image, list) else image
        path = folder / f"{prefix}_{i}.png"
        image.convert("RGB").save(path)
        paths.append(str(path))
    return paths


def build_data(work: Path, n_fashion_train: int, n_fashion_test: int, n_describe: int, smoke: bool) -> dict:
    """{"train": rows, "stamps": (paths, labels, names) per split, "fashion": ..., "describe": val rows}."""
    from hftl.zoo import load_dataset
    from hftl.zoo.tuxpaint import stamp_pixels_digest

    stamps = load_dataset("zoo:stamps", None)
    fashion = load_dataset("zoo:fashion-mnist", None)
    captions = load_dataset("zoo:stamps-captions", "describe")
    names_s = stamps["train"].features["label"].names
    names_f = fashion["train"].features["label"].names
    take = (lambda ds, n: ds.select(range(min(n, len(ds))))) if not smoke else \
        (lambda ds, n: ds.shuffle(seed=0).select(range(8)))
    fashion_train = fashion["train"].shuffle(seed=0)
    fashion_test = fashion["test"] if "test" in fashion else fashion["validation"]
    out = {"stamps": {}, "fashion": {}}
    for split, ds in (("train", take(stamps["train"], 10**6)), ("validation", take(stamps["validation"], 10**6))):
        out["stamps"][split] = (save_images(ds, work / "stamps", split), list(ds["label"]), names_s)
    for split, ds in (("train", take(fashion_train, n_fashion_train)), ("test", take(fashion_test, n_fashion_test))):
        out["fashion"][split] = (save_images(ds, work / "fashion", split), list(ds["label"]), names_f)
    held_out = {stamp_pixels_digest(im) for im in stamps["validation"]["image"]}
    describe_train = captions["train"].filter(lambda r: stamp_pixels_digest(r["images"][0]) not in held_out)
    describe_train = take(describe_train.shuffle(seed=0), n_describe)
    describe_val = take(captions["validation"], 10**6)
    train_paths = save_images(describe_train, work / "describe", "train", "images")
    val_paths = save_images(describe_val, work / "describe", "val", "images")
    answer = lambda r: r["messages"][1]["content"][0]["text"]  # noqa: E731
    rows = [row(p, WHAT, names[y]) for p, y, names in
            [(p, y, out[k]["train"][2]) for k in ("stamps", "fashion") for p, y in zip(*out[k]["train"][:2])]]
    rows += [row(p, DESCRIBE, answer(r)) for p, r in zip(train_paths, describe_train)]
    random.Random(0).shuffle(rows)
    out["train"] = rows
    out["describe"] = [(p, answer(r)) for p, r in zip(val_paths, describe_val)]
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answers(run_dir, rows: list[dict], work: Path, name: str) -> list[str]:
    prompts = write_jsonl(work / f"{name}.jsonl", rows)
    return [p["generated_text"] for p in hftl.predict(run_dir, [str(prompts)])]


def accuracy(generated: list[str], labels: list[int], names: list[str]) -> float:
    """The class word in the answer (case-insensitive; the longest name that appears wins, so "Shirt" inside
    "T-shirt/top" does not count twice)."""
    hits = 0
    for text, y in zip(generated, labels):
        found = sorted((n for n in names if n.lower() in text.lower()), key=len, reverse=True)
        hits += bool(found) and found[0] == names[y]
    return hits / len(labels)


def rouge_l(generated: list[str], references: list[str]) -> float:
    from hftl.tasks.seq2seq import text_scores  # run_summarization's ROUGE (rouge-score, stemmed), x100

    return text_scores(generated, references)["rougeL"] / 100


def probe(split: dict) -> float:
    """Logistic regression on the frozen vision tower's average-pooled features (the VLM's own tower and
    image processor)."""
    import numpy as np
    import torch
    import transformers as tf
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from hftl.zoo import resolve_model

    path = resolve_model("zoo:efficientnet-smollm2")
    model = tf.AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = tf.AutoProcessor.from_pretrained(path)

    def features(paths):
        out = []
        for i in range(0, len(paths), 32):
            images = [Image.open(p).convert("RGB") for p in paths[i:i + 32]]
            pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                out.append(model.model.vision_tower(pixels).last_hidden_state.mean(dim=(2, 3)).numpy())
        return np.concatenate(out)

    (train_paths, train_y, _), (test_paths, test_y, _) = split.values()
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(features(train_paths), train_y)
    return float(clf.score(features(test_paths), test_y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="4 rows of each source (results not written)")
    parser.add_argument("--fashion-train", type=int, default=160)
    parser.add_argument("--fashion-test", type=int, default=100)
    parser.add_argument("--describe-train", type=int, default=160)
    args = parser.parse_args()
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="quality_vlm_"))
    try:
        data = build_data(work, args.fashion_train, args.fashion_test, args.describe_train, args.smoke)
        train_file = write_jsonl(work / "train.jsonl", data["train"])
        untrained = work / "untrained"
        common = {**BASE, "data": {**BASE["data"], "train_file": str(train_file), "train_val_split": 0.05}}
        hftl.train({**common, "training": {**BASE["training"], "num_train_epochs": 0, "output_dir": str(untrained)}})
        stage1 = work / "stage1"
        r1 = hftl.train({**common, "model": {**BASE["model"], "freeze_language_model": True},
                         "training": {**BASE["training"], "learning_rate": 1e-3, "output_dir": str(stage1)}})
        stage2 = work / "stage2"
        r2 = hftl.train({**common, "model": {"model_name_or_path": str(stage1)},
                         "peft": {"method": "lora", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05},
                         "training": {**BASE["training"], "learning_rate": 5e-4, "output_dir": str(stage2)}})
        runs = {"untrained assembly": untrained, "stage 1: projector": stage1, "stage 2: projector + LoRA": stage2}
        scores = {}
        for label, run_dir in runs.items():
            s = {}
            for key in ("stamps", "fashion"):
                paths, labels, names = list(data[key].values())[1]
                generated = answers(run_dir, [row(p, WHAT, None) for p in paths], work, f"{key}_{len(scores)}")
                s[key] = accuracy(generated, labels, names)
            paths, refs = zip(*data["describe"])
            s["describe"] = rouge_l(answers(run_dir, [row(p, DESCRIBE, None) for p in paths], work, f"d{len(scores)}"),
                                    list(refs))
            scores[label] = s
            print(label, s, flush=True)
        scores["linear probe, same frozen tower"] = {"stamps": probe(data["stamps"]), "fashion": probe(data["fashion"]),
                                                     "describe": None}
        minutes = (time.perf_counter() - start) / 60
        n = {k: len(list(data[k].values())[1][0]) for k in ("stamps", "fashion")}
        table = md_table(["model", f"stamps: what is this? ({n['stamps']} val, 6 classes)",
                          f"Fashion-MNIST: what is this? ({n['fashion']} test, 10 classes)",
                          f"describe a stamp: ROUGE-L ({len(data['describe'])} val)"],
                         [[k, f"{v['stamps']:.3f}", f"{v['fashion']:.3f}",
                           "-" if v["describe"] is None else f"{v['describe']:.3f}"] for k, v in scores.items()])
        body = (f"{table}\n\nTraining mixture: {len(data['train'])} rows (stamps {len(data['stamps']['train'][0])}, "
                f"Fashion-MNIST {len(data['fashion']['train'][0])}, descriptions "
                f"{len(data['train']) - len(data['stamps']['train'][0]) - len(data['fashion']['train'][0])}), 5% held "
                f"out for eval_loss: stage 1 eval_loss {r1.metrics['eval_loss']:.3f}, stage 2 "
                f"{r2.metrics['eval_loss']:.3f}. Whole benchmark: {minutes:.1f} min.\n")
        if not args.smoke:
            (Path(__file__).parent / "results" / "quality_vlm.json").write_text(json.dumps(scores, indent=2) + "\n")
        write_result("quality_vlm", "Vision-language fine-tuning on CPU (image-text-to-text)", body, save=not args.smoke)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
