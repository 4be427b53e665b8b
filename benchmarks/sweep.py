"""`hftl sweep` against the hand-chosen recipes (issue 32): no hand-picking, a fixed CPU budget.

Two sweeps, each over generic transfer keys (strategy preset, learning rate, and what the task offers), each with
a wall-clock budget (`--timeout`: no new trial starts after it; the running one finishes), trials scored on a
seeded, stratified 20% slice of the training split (`hftl sweep`'s default), then the best values retrained on the
whole training split and scored once on the published validation split:

- `tweets`: all-MiniLM-L6-v2 on `zoo:tweets-sentiment` (2,000 train / 1,000 validation), the base recipe
  `recipes/gradual_unfreezing.yaml` with an evaluation per epoch (for the pruner). Against that recipe as
  committed (0.953, benchmarks/results/quality_text.md), whose values were picked by hand.
- `fashion`: EfficientNet-Lite0 (ImageNet) on `zoo:fashion-mnist` (1,000 train / 1,000 test images), full or
  frozen, no augmentation (it multiplies a CPU trial's time by ~50: results/quality_image.md). Against
  `recipes/image_best.yaml` (0.897, chosen from 13 hand-made candidates; 85 min of training on this CPU).

And the feature cache: the same frozen-backbone sweep (head learning rate, epochs, head fit) run twice, once with
a fresh on-disk feature cache and once with `HFTL_FEATURE_CACHE=0`; the trials are the same (seeded sampler,
deterministic CPU training), so the difference in wall time is the cache's.

    .venv/bin/python benchmarks/sweep.py                           # all (~80 min on 2 cores)
    .venv/bin/python benchmarks/sweep.py --only cache              # a part; rows accumulate in results/sweep.json
    .venv/bin/python benchmarks/sweep.py --only tweets --scale 0.05  # smoke run (not stored)

Writes benchmarks/results/sweep.md (numbers: sweep.json). Not run in CI.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, load_rows, md_table, merge, save_rows, selected, write_result

NAME = "sweep"
HAND = {"tweets": ("recipes/gradual_unfreezing.yaml", 0.953), "fashion": ("recipes/image_best.yaml", 0.897)}

TWEETS = merge(yaml.safe_load((ROOT / "recipes/gradual_unfreezing.yaml").read_text()),
               {"training": {"eval_strategy": "epoch", "save_strategy": "no", "logging_steps": 20,
                             "dataloader_num_workers": 0}})
FASHION = {
    "task": "image-classification",
    "model": {"model_name_or_path": "zoo:efficientnet-lite0"},
    "data": {"dataset_name": "zoo:fashion-mnist", "augment": False},
    "training": {"num_train_epochs": 8, "learning_rate": 1e-3, "warmup_steps": 0.1, "weight_decay": 0.01,
                 "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, "eval_strategy": "epoch",
                 "save_strategy": "no", "logging_steps": 20, "dataloader_num_workers": 0},
    "seed": 42,
}
# (base recipe, search space, wall-clock budget in seconds)
SWEEPS = {
    "tweets": (TWEETS, {
        "strategy.preset": {"type": "categorical", "choices": ["feature_extraction", "partial", "full"]},
        "training.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "strategy.discriminative_lr.layer_decay": {"type": "float", "low": 0.5, "high": 1.0},
        "strategy.gradual_unfreezing.every_steps": {"type": "int", "low": 1, "high": 60, "log": True},
    }, 1200),
    "fashion": (FASHION, {
        "strategy.preset": {"type": "categorical", "choices": ["feature_extraction", "full"]},
        "training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "data.image_size": {"type": "categorical", "choices": [96, 128, 160]},
        "training.num_train_epochs": {"type": "int", "low": 3, "high": 15},
        "regularization.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    }, 1800),
}
HEAD_SPACE = {
    "training.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    "training.num_train_epochs": {"type": "int", "low": 3, "high": 20},
    "strategy.head_fit": {"type": "categorical", "choices": ["trainer", "lbfgs"]},
}
CACHE = {  # (base, trials): frozen backbones, the same trials with and without the on-disk cache
    "tweets": (merge(TWEETS, {"strategy": {"preset": "feature_extraction"}}), 6),
    "fashion": (merge(FASHION, {"strategy": {"preset": "feature_extraction"}, "data": {"image_size": 128}}), 6),
}


def without(d: dict, *dotted: str) -> dict:
    """`d` without the dotted keys (a strategy block the frozen sweep has no use for)."""
    import copy

    d = copy.deepcopy(d)
    for key in dotted:
        *path, last = key.split(".")
        node = d
        for p in path:
            node = node.get(p, {})
        node.pop(last, None)
    return d


def run(base: dict, space: dict, folder: Path, trials: int, timeout: float | None, cache: str) -> dict:
    """One sweep in `folder`; `cache`: 'fresh' (an empty on-disk feature cache of its own) or 'off'."""
    import hftl

    os.environ.pop("HFTL_FEATURE_CACHE", None)
    if cache == "off":
        os.environ["HFTL_FEATURE_CACHE"] = "0"
    os.environ["HFTL_FEATURE_CACHE_DIR"] = str(folder / "feature-cache")
    space_file = folder / "space.yaml"
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    recipe = merge(base, {"training": {"output_dir": str(folder / "run")}, "overwrite_output_dir": True})
    start = time.perf_counter()
    result = hftl.sweep(recipe, space_file, trials=trials, timeout=timeout)
    wall = time.perf_counter() - start
    table = list(csv.DictReader((folder / "run/sweep/trials.csv").open()))
    states: dict[str, int] = {}
    for t in table:
        states[t["state"].lower()] = states.get(t["state"].lower(), 0) + 1
    trial_s = sum(float(t["seconds"] or 0) for t in table)
    final = result.final.metrics if result.final is not None else {}
    return {"wall_s": round(wall, 1), "trials_s": round(trial_s, 1), "trials": len(table), "states": states,
            "best_values": result.best_values, "best_slice": result.best_value,
            "accuracy": final.get("eval_accuracy"), "f1": final.get("eval_f1_macro"),
            "final_train_s": round(final.get("train_runtime") or 0, 1), "table": table}


def measure(rows: dict, only, scale: float, keep: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="sweep_bench_"))
    for name, (base, space, budget) in SWEEPS.items():
        if selected(name, only) and name not in rows:
            print(f"\n=== {name}: budget {budget * scale:.0f} s", flush=True)
            (work / name).mkdir()
            rows[name] = {**run(base, space, work / name, 1000, budget * scale, "fresh"), "budget_s": budget * scale}
            save_rows(NAME, rows, keep)
    for name, (base, trials) in CACHE.items():
        for cache in ("fresh", "off"):
            key = f"cache/{name}/{cache}"
            if selected(key, only) and key not in rows:
                print(f"\n=== {key}", flush=True)
                folder = work / key.replace("/", "_")
                folder.mkdir()
                frozen = without(base, "strategy.gradual_unfreezing", "strategy.discriminative_lr")
                rows[key] = run(frozen, HEAD_SPACE, folder, max(2, round(trials * min(1.0, scale * 4))), None, cache)
                save_rows(NAME, rows, keep)


def report(rows: dict) -> str:
    out = ["## Sweep vs hand-chosen recipe", "",
           "Accuracy on the published validation split (tweets: 1,000 validation tweets; Fashion-MNIST: the 1,000 "
           "test images), scored once, by the best values retrained on the whole training split. \"best on slice\": "
           "the best trial's accuracy on the held-out 20% of the training split, which chose it.", ""]
    table = []
    for name in SWEEPS:
        r = rows.get(name)
        if not r:
            continue
        recipe, hand = HAND[name]
        states = ", ".join(f"{n} {s}" for s, n in sorted(r["states"].items()))
        values = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                           for k, v in r["best_values"].items())
        table.append([name, f"{r['budget_s']:.0f} s", f"{r['trials']} ({states})", f"{r['wall_s']:.0f} s", values,
                      r["best_slice"], r["accuracy"], r["f1"], f"{hand:.3f} (`{recipe}`)"])
    if table:
        out += [md_table(["dataset", "budget", "trials", "sweep wall (incl. final run)", "best values",
                          "best on slice", "sweep: accuracy", "macro-F1", "hand-chosen"], table), ""]
    for name in SWEEPS:
        if name in rows:
            out += [f"### {name}: every trial", "", md_table(
                ["trial", "state", "slice accuracy", "seconds", *SWEEPS[name][1]],
                [[t["trial"], t["state"], t["value"] or "-", t["seconds"],
                  *[t.get(k, "") for k in SWEEPS[name][1]]] for t in rows[name]["table"]]), ""]
    cache = []
    for name in CACHE:
        on, off = rows.get(f"cache/{name}/fresh"), rows.get(f"cache/{name}/off")
        if on and off:
            same = [t["value"] for t in on["table"]] == [t["value"] for t in off["table"]]
            cache.append([name, on["trials"], f"{on['trials_s']:.0f} s", f"{off['trials_s']:.0f} s",
                          f"{off['trials_s'] / on['trials_s']:.1f}x", f"{on['wall_s']:.0f} s", f"{off['wall_s']:.0f} s",
                          "yes" if same else "no"])
    if cache:
        out += ["## The feature cache", "",
                "A frozen-backbone sweep (head learning rate 1e-3..1e-1, 3-20 epochs, head fit trainer | lbfgs) run "
                "twice: with a fresh on-disk feature cache (the first trial computes the backbone's features, the "
                "others read them) and with `HFTL_FEATURE_CACHE=0` (every trial runs the backbone). \"trials\": the "
                "trials' own seconds; \"wall\": the whole command, the final run on the whole split included.", "",
                md_table(["dataset", "trials", "trials, cache", "trials, no cache", "speed-up", "wall, cache",
                          "wall, no cache", "same objective values"], cache), ""]
    out += ["## Notes", "",
            "- Neither sweep matched its hand-chosen recipe on the validation split. Tweets: 0.946 vs 0.953; the "
            "sweep's best slice score (0.9575 on 400 rows, +-1.0 point standard error) came from its first, random "
            "trial, and 15 trials in 20 minutes leave TPE (10 random start-up trials) 5 guided ones. Fashion-MNIST: "
            "0.873 vs 0.897 -- the hand-chosen recipe trains 30 epochs at 192 px with augmentation (85 minutes on "
            "this CPU for that one run), outside this 30-minute budget; the sweep's choice (full fine-tuning at 96 px, "
            "3 epochs, lr 2.9e-3) is the plain 96 px baseline's neighbour (0.871, results/quality_image.md).",
            "- The median pruner compares trials at the same optimizer step. With `num_train_epochs` in the space, a "
            "long schedule is early in its course (within or just past its 10% warm-up) at the first evaluation and scores low there: "
            "27 of the 34 Fashion-MNIST trials were pruned, every one of more than 6 epochs among them. Spaces over "
            "the schedule's length want `--pruner none` or a pruner with warm-up steps (`hftl.sweep(..., "
            "pruner=optuna.pruners.MedianPruner(n_warmup_steps=...))`).",
            "- The feature cache serves every frozen-backbone trial after the first: the same objective values, "
            "2.5-2.7x less trial time; the final run trains on the whole split, a different set of rows, and "
            "computes its features again.", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated parts of row keys (tweets, fashion, cache/tweets/off ...)")
    parser.add_argument("--scale", type=float, default=1.0, help="budget and trial-count factor; < 1: a smoke run, "
                        "not stored")
    parser.add_argument("--fresh", action="store_true", help="forget the stored rows")
    args = parser.parse_args()
    keep = args.scale == 1.0
    rows = load_rows(NAME, keep and not args.fresh)
    measure(rows, args.only.split(",") if args.only else None, args.scale, keep)
    write_result(NAME, "hftl sweep: no hand-picking, a fixed CPU budget", report(rows), save=keep)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
