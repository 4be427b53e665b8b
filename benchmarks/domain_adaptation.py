"""Domain adaptation by pseudo-labels (`self_training:`): airline tweets -> tweets on other topics.

The tweets corpus (`zoo:tweets-sentiment`'s source: the positive/negative rows with confidence >= 0.7) mixes
airline tweets (9,134 rows mention an airline handle or "flight") with other topics (4,018: self-driving
cars, phones, football, ...). Source = airline tweets, labelled: 2,000 train + 500 validation (seeded).
Target = the other topics, seeded split into a pool of 2,000 the rounds see without labels and 2,018 labelled
test rows that nothing trains or tunes on. Model: `zoo:minilm-l6` full fine-tuning (quality_text.py's
recipe), 2 epochs per round, threshold 0.9 (the seed's value, chosen before any run), 2 rounds.

Rows: source only (round 0); self-training rounds 1 and 2 (each trains afresh on the source rows + the previous
round's confident pseudo-labels); the ceiling: the same recipe trained on source + the pool with its true labels.

    .venv/bin/python benchmarks/domain_adaptation.py               # ~20 min on 2 quiet cores
    .venv/bin/python benchmarks/domain_adaptation.py --epochs 0.05 # smoke run (results not written)

Prints a markdown table and writes benchmarks/results/domain_adaptation.md (numbers: .json). Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tempfile
from pathlib import Path

from common import load_rows, md_table, merge, run_row, selected, write_result
from quality_text import BASE

AIRLINE = re.compile(r"@(united|americanair|usairways|southwestair|jetblue|virginamerica|delta)\b|flight", re.I)
THRESHOLD, ROUNDS = 0.9, 2


def write_domains(folder: Path) -> dict[str, Path]:
    """source train/validation, target pool (labels kept only to score the pseudo-labels) and target test."""
    from hftl.zoo.datasets import tweets_rows

    rows = [{"text": r["text"], "label": r["sentiment"]} for r in tweets_rows()
            if r.get("sentiment") in ("positive", "negative") and float(r.get("confidence") or 0) >= 0.7]
    source = [r for r in rows if AIRLINE.search(r["text"])]
    target = [r for r in rows if not AIRLINE.search(r["text"])]
    random.Random(0).shuffle(source)
    random.Random(1).shuffle(target)
    parts = {"source_train": source[:2000], "source_validation": source[2000:2500],
             "target_pool": target[:2000], "target_test": target[2000:]}
    parts["ceiling_train"] = parts["source_train"] + parts["target_pool"]
    paths = {}
    for name, part in parts.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in part))
    print({k: len(v) for k, v in parts.items()}, f"(airline {len(source)}, other {len(target)})", flush=True)
    return paths


def recipe_for(paths: dict, train: str, out: Path, epochs: float) -> dict:
    return merge(BASE, {
        "data": {"dataset_name": None, "dataset_config_name": None, "train_file": str(paths[train]),
                 "validation_file": str(paths["source_validation"])},
        "strategy": {"preset": "full"},
        "training": {"output_dir": str(out), "num_train_epochs": epochs, "warmup_steps": 0.1, "weight_decay": 0.01}})


def self_training_rows(paths: dict, work: Path, epochs: float) -> dict:
    import hftl

    recipe = recipe_for(paths, "source_train", work / "self_training", epochs)
    recipe["self_training"] = {"unlabeled": str(paths["target_pool"]), "target_eval": str(paths["target_test"]),
                               "threshold": THRESHOLD, "rounds": ROUNDS}
    result = hftl.train(recipe)
    return {"rounds": [{k: v for k, v in r.items() if k != "run"} for r in result.rounds]}


def ceiling_row(paths: dict, work: Path, epochs: float) -> dict:
    import hftl
    from hftl.runs.evaluate import metrics_of, score
    from hftl.runs.load import read_run
    from hftl.runs.evaluate import labelled_data

    result = hftl.train(recipe_for(paths, "ceiling_train", work / "ceiling", epochs))
    run = read_run(result.output_dir)
    scored = score(run, labelled_data(run, paths["target_test"]), model=result.model)
    target = metrics_of(run, scored.probs, scored.true)
    return {"eval_accuracy": result.metrics["eval_accuracy"], "eval_f1_macro": result.metrics["eval_f1_macro"],
            "target_accuracy": target["eval_accuracy"], "target_f1_macro": target["eval_f1_macro"],
            "train_s": result.metrics.get("train_runtime")}


def table(raw: dict) -> str:
    rows = []
    for r in raw.get("self_training", {}).get("rounds", []):
        used = raw["self_training"]["rounds"][r["round"] - 1]["next"] if r["round"] else None
        label = "source only (round 0)" if not used else f"self-training round {r['round']}"
        pseudo = f"{used['kept']:,} ({', '.join(f'{k} {v:,}' for k, v in used['per_class'].items())})" if used else "-"
        acc = used.get("pseudo_accuracy", "-") if used else "-"
        rows.append([label, r["target_accuracy"], r["target_f1_macro"], r["eval_accuracy"], pseudo, acc])
    c = raw.get("ceiling")
    if c:
        rows.append(["ceiling: source + the pool with its true labels", c["target_accuracy"], c["target_f1_macro"],
                     c["eval_accuracy"], "2,000 true labels", "-"])
    return md_table(["row", "target accuracy", "target macro-F1", "source val accuracy", "pseudo-labels trained on",
                     "pseudo-label accuracy"], rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="self_training and/or ceiling")
    ap.add_argument("--epochs", type=float, default=None, help="override the 2 epochs (results not written)")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else None
    keep, epochs = args.epochs is None, args.epochs or 2
    raw = load_rows("domain_adaptation", keep)
    work = Path(tempfile.mkdtemp(prefix="hftl-bench-da-"))
    try:
        paths = write_domains(work)
        if selected("self_training", only):
            run_row("domain_adaptation", raw, "self_training", f"source only + {ROUNDS} pseudo-label rounds",
                    lambda: self_training_rows(paths, work, epochs), keep)
        if selected("ceiling", only):
            run_row("domain_adaptation", raw, "ceiling", "source + target pool with true labels",
                    lambda: ceiling_row(paths, work, epochs), keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = f"""
Source: 2,000 airline tweets (labelled) + 500 for validation; target: tweets on other topics, a pool of 2,000
seen without labels and 2,018 labelled test rows (seeded splits of the 9,134 airline / 4,018 other rows of
`zoo:tweets-sentiment`'s positive/negative tweets with confidence >= 0.7). `zoo:minilm-l6`, full fine-tuning,
lr 5e-5, 2 epochs per round, batch 32, max_seq_length 64, seed 42. Self-training: threshold {THRESHOLD}, {ROUNDS}
rounds, each trained afresh from MiniLM on the source rows + the previous round's confident predictions on the
pool. "pseudo-label accuracy": the kept pseudo-labels scored against the pool's true labels (never trained on).

{table(raw)}
"""
    write_result("domain_adaptation", "Domain adaptation by pseudo-labels: airline -> other-topic tweets", body, save=keep)


if __name__ == "__main__":
    main()
