"""Pooling on a sentence-transformers checkpoint: `model.pooling: default` (BERT's own pooler) vs `mean`.

Issue 33 ("Runs that load without remote code"): a run with `model.pooling: mean` (what `auto` picks for
all-MiniLM-L6-v2, from its 1_Pooling config) saves a config.json with an `auto_map`, so plain transformers
loads it only with trust_remote_code=True; `model.pooling: default` keeps BERT's pooler (dense + tanh on
[CLS], its weights from the checkpoint, trained with the rest) and a run that plain transformers loads as it
is. What does `default` cost in quality?

Rows: `recipes/demo.yaml` (full fine-tuning, discriminative LR, 2 epochs) and `recipes/gradual_unfreezing.yaml`
(discriminative LR + gradual unfreezing every 15 steps, 3 epochs), each with `model.pooling=default` and
`model.pooling=mean`, seeds 42, 43 and 44 (the top-level `seed` key): 12 runs with `hftl.train(recipe file,
overrides)` in this process. The recipes run as shipped, apart from bookkeeping that leaves the trained
weights unchanged (as in deploy.py): `training.eval_strategy=no`, `training.save_strategy=no` (hftl.train
evaluates once at the end, so train_runtime is training only), a temporary `training.output_dir`,
`overwrite_output_dir=true`. Accuracy and macro-F1 on the recipes' validation split (zoo:tweets-sentiment
`binary`: 1,000 tweets).

    nice -n 10 .venv/bin/python benchmarks/pooling.py                  # all 12 runs: ~40-60 min on 2 busy cores
    nice -n 10 .venv/bin/python benchmarks/pooling.py --only demo/default  # some runs; the others kept from earlier
    nice -n 10 .venv/bin/python benchmarks/pooling.py --smoke          # 2 steps, 32 eval tweets: nothing written
    .venv/bin/python benchmarks/pooling.py --report                    # rewrite the .md from pooling.json

Prints a markdown table and writes benchmarks/results/pooling.md (per-run numbers: pooling.json, stored after
each run, so an interrupted invocation loses at most the run in progress).
Not run in CI.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, git_revision, load_rows, md_table, run_row, selected, write_result

NAME = "pooling"
RECIPES = {"demo": "recipes/demo.yaml", "gradual_unfreezing": "recipes/gradual_unfreezing.yaml"}
POOLINGS = ("default", "mean")
SEEDS = (42, 43, 44)
# Same weights either way: hftl.train evaluates once at the end; no per-epoch evaluation or checkpoint.
BOOKKEEPING = ["training.eval_strategy=no", "training.save_strategy=no", "overwrite_output_dir=true"]
SMOKE = ["training.max_steps=2", "data.max_eval_samples=32"]
WITHIN = 0.005  # "within 0.5 point" of accuracy


def key_of(recipe: str, pooling: str, seed: int) -> str:
    return f"{recipe}/{pooling}/seed{seed}"


def train_run(recipe: str, pooling: str, seed: int, out: Path, smoke: bool) -> dict:
    import hftl
    from hftl.model import pooling_of
    from hftl.model.pooling import needs_remote_code

    overrides = [f"model.pooling={pooling}", f"seed={seed}", f"training.output_dir={out}", *BOOKKEEPING,
                 *(SMOKE if smoke else [])]
    start = time.perf_counter()
    result = hftl.train(str(ROOT / RECIPES[recipe]), overrides)
    m = result.metrics
    row = {"recipe": RECIPES[recipe], "pooling": pooling, "pooling_used": pooling_of(result.model), "seed": seed,
           "accuracy": m["eval_accuracy"], "f1": m["eval_f1_macro"], "train_runtime": m.get("train_runtime"),
           "wall_s": time.perf_counter() - start,
           "trainable_end": sum(p.numel() for p in result.model.parameters() if p.requires_grad),
           "needs_trust_remote_code": needs_remote_code(result.output_dir),
           # speed.micro_batch (length-sorted micro-batches, hftl's CPU default since 0ba71bb): None = whole batches
           "micro_batch": getattr(result.trainer, "micro_batch", None), "hftl": git_revision(), "overrides": overrides}
    del result
    gc.collect()
    return row


def report(raw: dict, save: bool) -> None:
    rows, per_run, verdicts = [], [], []
    means: dict[tuple[str, str], float] = {}
    for recipe, path in RECIPES.items():
        for pooling in POOLINGS:
            runs = [raw.get(key_of(recipe, pooling, s)) for s in SEEDS]
            done = [r for r in runs if r is not None]
            accs = [r["accuracy"] for r in done]
            if done:
                means[recipe, pooling] = statistics.mean(accs)
            for s, r in zip(SEEDS, runs):
                if r is not None:
                    per_run.append([f"`{path}`", pooling, s, r["accuracy"], r["f1"], f"{r['train_runtime']:.0f}",
                                    "yes" if r["needs_trust_remote_code"] else "no"])
            rows.append([
                f"`{path}`", pooling,
                *[f"{r['accuracy']:.3f}" if r else "not run" for r in runs],
                (f"{statistics.mean(accs):.3f} ± {statistics.stdev(accs):.3f}" if len(accs) > 1
                 else f"{accs[0]:.3f}" if accs else "-"),
                f"{statistics.mean(r['f1'] for r in done):.3f}" if done else "-",
                f"{statistics.mean(r['train_runtime'] for r in done):.0f}" if done else "-",
                "",
            ])
        if (recipe, "default") in means and (recipe, "mean") in means:
            diff = means[recipe, "default"] - means[recipe, "mean"]
            rows[-2][-1] = f"{100 * diff:+.1f} pt"
            n = min(sum(raw.get(key_of(recipe, p, s)) is not None for s in SEEDS) for p in POOLINGS)
            within = abs(diff) <= WITHIN + 1e-12
            verdict = ("**within** 0.5 point of" if within else
                       "**more than 0.5 point above**" if diff > 0 else "**more than 0.5 point below**")
            verdicts.append(f"- `{path}`: `default` is {verdict} `mean` on the mean of {n} seed(s) "
                            f"({means[recipe, 'default']:.3f} vs {means[recipe, 'mean']:.3f}, "
                            f"{100 * diff:+.1f} points).")

    table = md_table(["recipe", "model.pooling", *[f"acc seed {s}" for s in SEEDS], "accuracy mean ± std",
                      "macro-F1 mean", "train s mean", "default − mean (accuracy)"], rows)
    runs_table = md_table(["recipe", "model.pooling", "seed", "accuracy", "macro-F1", "train_runtime s",
                           "saved run needs trust_remote_code"], per_run)
    body = f"""
all-MiniLM-L6-v2 (`zoo:minilm-l6`) on tweets, positive vs negative (`zoo:tweets-sentiment`, config `binary`:
2,000 train / 1,000 validation; the majority class is 82.1% of the validation set). Each recipe as shipped,
`model.pooling` overridden to `default` (BERT's pooler: dense + tanh on [CLS], its weights from the checkpoint,
trained with the rest) or `mean` (attention-masked mean of the token states: what `model.pooling: auto` picks
for this checkpoint from its sentence-transformers 1_Pooling config), seeds 42, 43, 44. Bookkeeping only:
`training.eval_strategy=no`, `training.save_strategy=no` (hftl.train evaluates once at the end; train s is the
Trainer's train_runtime, training only), `overwrite_output_dir=true`. Accuracy and macro-F1 on the 1,000
validation tweets; std is the sample standard deviation over the seeds.

{table}

{chr(10).join(verdicts) if verdicts else "- not enough runs for a comparison yet."}

Per run:

{runs_table}

Notes:
- With `default` the pooler (`bert.pooler.dense`, 147,840 parameters) is one more depth group between the top
  block and the head (`hftl plan`): under `discriminative_lr` every encoder depth gets one more 0.8x factor
  (embeddings 3.4e-5 instead of 4.2e-5 in `gradual_unfreezing.yaml`), and with `gradual_unfreezing` the pooler
  unfreezes at step 15, the top block at 30, the embeddings at step 120 instead of 105 (of 189). The rows
  compare the recipes as a user would run them, these side effects included.
- "saved run needs trust_remote_code": whether the run's config.json carries hftl's `auto_map` (mean/cls
  pooling), i.e. whether plain `transformers` needs `trust_remote_code=True` to load it.
- Timings are on a shared 2-core machine (other processes ran beside it): compare them as orders of magnitude.
"""
    write_result(NAME, "Pooling: the checkpoint's pooler (`default`) vs mean pooling on MiniLM tweets", body,
                 save=save)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated: run only the runs whose key (recipe/pooling/seedN) contains one")
    ap.add_argument("--smoke", action="store_true", help="2 training steps, 32 eval tweets: nothing written")
    ap.add_argument("--report", action="store_true", help="train nothing: rewrite the .md from pooling.json")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else None
    keep = not args.smoke  # only real runs go into benchmarks/results/

    raw = load_rows(NAME, keep)
    if not args.report:
        work = Path(tempfile.mkdtemp(prefix="hftl-bench-pooling-"))
        start = time.perf_counter()
        try:
            for recipe in RECIPES:
                for pooling in POOLINGS:
                    for seed in SEEDS:
                        key = key_of(recipe, pooling, seed)
                        if not selected(key, only):
                            continue
                        out = work / key.replace("/", "-")
                        run_row(NAME, raw, key, f"{RECIPES[recipe]} model.pooling={pooling} seed={seed}",
                                lambda: train_run(recipe, pooling, seed, out, args.smoke), keep,
                                merge_stored=True)
                        shutil.rmtree(out, ignore_errors=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"\ntraining wall time: {time.perf_counter() - start:.0f} s", flush=True)
    report(raw, save=keep)


if __name__ == "__main__":
    main()
