"""Cached features vs the normal frozen-backbone run, and a second run served from the on-disk feature cache.

All runs are the same hftl recipe -- all-MiniLM-L6-v2 frozen (`preset: feature_extraction`, mean pooling from
the checkpoint), a new head, tweets positive vs negative (2,000 train / 1,000 eval), evaluation every epoch:
1. `strategy.cache_features: false`: the backbone runs every epoch (train + evaluation texts);
2. `cache_features: true`, a fresh `$HFTL_CACHE`: the backbone runs once, and its outputs go to disk;
3. the same with another head learning rate (what a user tries next): the features come from disk, the
   backbone never runs.
Goals: run 2 >= 8x faster than run 1 over 10 epochs (the bound is ~10x), the same model; run 3 >= 50x faster
than run 1 over 3 epochs. Times: the whole `hftl.train` call, and "after setup" (from the end of
`hftl.training.setup.setup` -- model loaded, data tokenized -- to the end: features computed or read, training,
every evaluation, outputs).

    .venv/bin/python benchmarks/cached_features.py [--epochs 3] [--config binary-full] [--repeats 5]

Run 3 is repeated (`--repeats`, each reading the disk cache) and the median shown: its few seconds swing by
half a second or more from one run to the next (writing the 90 MB model, the disk).

`--config binary-full` trains on all 12,152 training tweets (same 1,000 evaluation tweets) and writes
results/cached_features_binary-full.md: the fixed costs of a run weigh less against a longer backbone pass.

Prints a markdown table and writes benchmarks/results/cached_features.md. Not run in CI.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import md_table, write_result


def recipe(cache: bool, epochs: int, out: str, config: str = "binary") -> dict:
    return {
        "task": "text-classification",
        "model": {"model_name_or_path": "zoo:minilm-l6"},
        "data": {"dataset_name": "zoo:tweets-sentiment", "dataset_config_name": config, "max_seq_length": 64},
        "strategy": {"preset": "feature_extraction", "cache_features": cache},
        "training": {"output_dir": out, "num_train_epochs": epochs, "learning_rate": 5e-3,
                     "per_device_train_batch_size": 32, "per_device_eval_batch_size": 64,
                     "save_strategy": "no", "eval_strategy": "epoch", "logging_steps": 50},
        "seed": 0,
    }


WHY = """
The cached pass batches texts shortest first (features are stored by index, so order is free), which cuts
padding; the uncached run pads random batches. The second cached run still loads the model, tokenizes the data
and digests the exact input tensors (the key of its cache entry), then trains the head on features read from
disk. A BERT classifier reads only the pooled output, so the cached token states are not gathered per batch, and
the idle backbone is not walked by the Trainer's model.train() every step (since 2026-12-05: the Trainer's part
of the second run 0.90 s -> 0.69 s on the 2,000 tweets, 3.79 s -> 2.35 s on all 12,152). Its remaining time is
the Trainer's own (zero_grad and gradient clipping still walk every module of the full model each step; 4
evaluations; a full `gc.collect` before training), writing the full 90 MB model (the output must load without hftl) and the plots: 2-5 s that do not
shrink with a faster backbone pass, so the speed-up is bounded by how long the uncached run is. On busy cores
(2026-12-02) the uncached run took 141 s and the ratio read 33.6x; on quiet cores it takes about 60 s.
"""


def main() -> None:
    import os

    import hftl
    from hftl.training import pipeline

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--config", default="binary", choices=["binary", "binary-full"])
    parser.add_argument("--repeats", type=int, default=5,
                        help="second cached runs (a few seconds each): the median is shown")
    args = parser.parse_args()
    epochs, config = args.epochs, args.config
    spent = {}  # seconds inside pipeline.setup and the Trainer's train() and save_model() of the current run

    def timed(name, f):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    from transformers import Trainer

    pipeline.setup = timed("setup", pipeline.setup)
    Trainer.train = timed("train", Trainer.train)
    Trainer.save_model = timed("save", Trainer.save_model)
    rows, heads = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HFTL_FEATURE_CACHE_DIR"] = f"{tmp}/features"  # a fresh feature store (the zoo's stays put)
        runs = [("cache_features: false", False, 5e-3), ("cache_features: true, first run (writes the disk cache)", True, 5e-3),
                ("cache_features: true, second run, head lr 1e-2 (reads the disk cache)", True, 1e-2)]
        for i, (name, cache, lr) in enumerate(runs):
            timings = []  # (whole, after setup, split, result) of each repeat; runs 1 and 2 once
            for rep in range(args.repeats if i == 2 else 1):
                r_recipe = recipe(cache, epochs, f"{tmp}/run{i}_{rep}", config)
                r_recipe["training"]["learning_rate"] = lr
                spent.clear()
                start = time.perf_counter()
                r = hftl.train(r_recipe)
                end = time.perf_counter()
                split = {k: spent[k] for k in ("setup", "train", "save")}
                split["rest"] = end - start - sum(split.values())
                timings.append((end - start, end - start - spent["setup"], split, r))
            whole_times = [t[0] for t in timings]
            whole, after, split, r = sorted(timings, key=lambda t: t[0])[len(timings) // 2]  # the median run
            lm = r.plan.layer_map
            heads[i] = {n: p.detach().clone() for n, p in r.model.named_parameters() if lm.depth[n] == lm.head_depth}
            if len(timings) > 1:
                name += f", median of {len(timings)}"
            rows.append([name, r.metrics["eval_accuracy"], r.metrics["eval_f1_macro"], round(whole, 1), round(after, 1)])
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in split.items())
    repeats = ", ".join(f"{t:.1f}" for t in whole_times)
    diff = max((heads[1][n] - heads[0][n]).abs().max().item() for n in heads[0])
    for row in rows:
        row += [f"{rows[0][3] / row[3]:.1f}x", f"{rows[0][4] / row[4]:.1f}x"]
    body = md_table(["run", "accuracy", "macro-F1", "seconds (whole run)", "seconds after setup",
                     "speed-up (whole)", "speed-up (after setup)"], rows)
    body += (f"\n\n{epochs} epochs, evaluation every epoch. Max |head weight difference| between runs 1 and 2 (same "
             f"learning rate) = {diff:.2e}. Goal for the second cached run: >= 50x over 3 epochs; measured "
             f"{rows[0][3] / rows[2][3]:.1f}x on the whole run, {rows[0][4] / rows[2][4]:.1f}x after setup.\n"
             f"\nThe second cached runs took {repeats} s (whole run). Where the median one's time goes: {parts} "
             f"(setup: model load, tokenizing; train: the Trainer's train() with its evaluations; save: writing the "
             f"full model; rest: the cache key (a digest of every input tensor) and the read, metrics, plots, card).\n"
             + WHY)
    result, train_rows = ("cached_features", "2,000") if config == "binary" else (f"cached_features_{config}", "12,152")
    write_result(result, f"Cached features vs frozen backbone, {epochs} epochs, {train_rows} training tweets", body)


if __name__ == "__main__":
    main()
