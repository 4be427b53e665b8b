"""Continual fine-tuning (`continual:`): airline tweets, then tweets on other topics, one head.

The same seeded domains as domain_adaptation.py: old task = 2,000 airline tweets (validation: 500 more),
new task = 2,000 other-topic tweets (validation: the 2,018 other-topic test rows). The previous run is
`zoo:minilm-l6` fully fine-tuned on the old task (2 epochs, lr 5e-5); each row continues it on the new task with
the same schedule: plainly, with replay (20% / 50% of the new rows sampled from the old training data), with
EWC (lambda 1e3 / 1e5; the Fisher from 256 old examples, computed once and stored in the previous run dir).
Old and new accuracy are measured before (the previous model) and after.

    .venv/bin/python benchmarks/continual.py                # ~15 min on 2 quiet cores
    .venv/bin/python benchmarks/continual.py --epochs 0.05  # smoke run (results not written)

Prints a markdown table and writes benchmarks/results/continual.md (numbers: .json). Not run in CI.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import load_rows, md_table, run_row, selected, write_result
from domain_adaptation import recipe_for, write_domains

VARIANTS = [
    ("plain", "continue on the new data only", {}),
    ("replay_0.2", "replay 20% (old rows mixed in)", {"replay": {"fraction": 0.2}}),
    ("replay_0.5", "replay 50%", {"replay": {"fraction": 0.5}}),
    ("ewc_1e3", "EWC lambda 1e3", {"ewc": {"lambda": 1e3}}),
    ("ewc_1e5", "EWC lambda 1e5", {"ewc": {"lambda": 1e5}}),
]


def continued(paths: dict, previous: Path, out: Path, epochs: float, changes: dict) -> dict:
    import hftl

    recipe = recipe_for(paths, "target_pool", out, epochs)
    recipe["data"]["validation_file"] = str(paths["target_test"])
    recipe["continual"] = {"previous": str(previous), **changes}
    m = hftl.train(recipe).metrics
    return {k: v for k, v in m.items() if k.startswith("continual_")} | {"train_s": m.get("train_runtime")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated parts of row keys")
    ap.add_argument("--epochs", type=float, default=None, help="override the 2 epochs (results not written)")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else None
    keep, epochs = args.epochs is None, args.epochs or 2
    raw = load_rows("continual", keep)
    work = Path(tempfile.mkdtemp(prefix="hftl-bench-continual-"))
    try:
        import hftl

        paths = write_domains(work)
        previous = work / "previous"
        hftl.train(recipe_for(paths, "source_train", previous, epochs))
        for key, label, changes in VARIANTS:
            if selected(key, only):
                run_row("continual", raw, key, label, lambda: continued(paths, previous, work / key, epochs, changes), keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for key, label, _ in VARIANTS:
        r = raw.get(key)
        if r is None:
            rows.append([label, "not run", "", "", "", ""])
            continue
        ob, oa = r["continual_old_before_accuracy"], r["continual_old_after_accuracy"]
        rows.append([label, ob, oa, f"{oa - ob:+.3f}", r["continual_new_before_accuracy"], r["continual_new_after_accuracy"]])
    body = f"""
Old task: 2,000 airline tweets (old accuracy: their 500 validation rows); new task: 2,000 other-topic tweets (new
accuracy: 2,018 other-topic test rows) -- the seeded domains of domain_adaptation.py. `zoo:minilm-l6`, full
fine-tuning, lr 5e-5, {epochs:g} epochs for the previous run and for each continuation, batch 32, seed 42.
"before": the previous run's model; "after": the continued model.

{md_table(["row", "old before", "old after", "old change", "new before", "new after"], rows)}
"""
    write_result("continual", "Continual fine-tuning: airline -> other-topic tweets", body, save=keep)


if __name__ == "__main__":
    main()
