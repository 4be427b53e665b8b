"""`hftl sweep`: a space over strategy keys searched on a held-out slice of the training split, a refused combination
as a failed trial, pruning, resuming, a second process on the same SQLite study, and bad input in one paragraph."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

import hftl
from conftest import child_env, prepared
from hftl.errors import HftlError, RecipeError

FAST = {"num_train_epochs": 2, "learning_rate": 3e-3, "eval_strategy": "epoch"}


def _space(tmp_path, text: str):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


def _rows(out):
    with open(out / "sweep" / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_the_held_out_slice_is_seeded_stratified_and_apart(text_recipe):
    from hftl.data import holdout

    splits = prepared(text_recipe())[0]
    a, b = holdout(splits, 0.25, 0), holdout(splits, 0.25, 0)
    assert len(a.validation) == 24 and len(a.train) == 72
    assert a.validation["text"] == b.validation["text"]  # seeded: every trial scores the same rows
    assert not set(a.validation["text"]) & set(a.train["text"]) or len(set(splits.train["text"])) < 96
    counts = [a.validation["labels"].count(c) for c in (0, 1)]
    assert abs(counts[0] - counts[1]) <= 1  # stratified (the toy data is balanced)


def test_a_sweep_over_strategy_keys(text_recipe, tmp_path):
    import optuna

    recipe = text_recipe(training=FAST)
    space = _space(tmp_path, "strategy.preset: {type: categorical, choices: [feature_extraction, full]}\n"
                             "strategy.discriminative_lr.layer_decay: {type: float, low: 0.5, high: 1.0}\n"
                             "training.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    result = hftl.sweep(recipe, space, trials=3, pruner=optuna.pruners.NopPruner())
    out = result.final.output_dir
    rows = _rows(out)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert {r["strategy.preset"] for r in rows} <= {"feature_extraction", "full"}
    best = max(rows, key=lambda r: float(r["value"]))
    assert result.best_value == pytest.approx(float(best["value"])) and result.metric == "accuracy"
    # trials were scored on 20% of the 96 training rows; the final run on the validation split (32 rows)
    trial = out / "sweep" / f"trial-{int(best['trial']):04d}"
    assert "train examples: 76, evaluation examples: 20" in (trial / "README.md").read_text()
    assert not list(trial.glob("*.safetensors"))  # a trial keeps its numbers, not its weights
    card = (out / "README.md").read_text()
    assert "How this run's values were chosen" in card and "train examples: 96, evaluation examples: 32" in card
    chosen = hftl.load_recipe(out / "sweep" / "best_recipe.yaml")  # a complete recipe hftl validate accepts
    assert chosen.strategy.preset == best["strategy.preset"]
    assert chosen.training["learning_rate"] == pytest.approx(float(best["training.learning_rate"]))
    assert (out / "sweep" / "history.png").is_file() and (out / "model.safetensors").is_file()


def test_failed_and_pruned_trials_and_resume(text_recipe, tmp_path):
    """A value the recipe refuses is a failed trial with its reason; a pruned trial stops at its first evaluation;
    the same sweep run again continues to the total, finished trials untouched."""
    import optuna

    recipe = text_recipe(training=FAST, strategy={"gradual_unfreezing": {"every_epochs": 1}})
    space = _space(tmp_path, "strategy.head_fit: {type: categorical, choices: [trainer, lbfgs]}\n")
    hftl.sweep(recipe, space, trials=3, pruner=optuna.pruners.ThresholdPruner(lower=2.0), final=False)
    out = tmp_path / "out"
    rows = _rows(out)
    assert {r["state"] for r in rows} <= {"FAIL", "PRUNED"} and len(rows) == 3
    for r in rows:
        if r["strategy.head_fit"] == "lbfgs":
            assert r["state"] == "FAIL" and "gradual_unfreezing" in r["reason"]
        else:  # accuracy is never >= 2: pruned at the first evaluation (10 steps of 8 of the 76 rows)
            assert r["state"] == "PRUNED" and r["reason"] == "pruned at step 10"
    before = [(r["trial"], r["state"], r["strategy.head_fit"]) for r in rows]
    hftl.sweep(recipe, space, trials=4, pruner=optuna.pruners.NopPruner(), final=False)
    rows = _rows(out)
    assert len(rows) == 4 and [(r["trial"], r["state"], r["strategy.head_fit"]) for r in rows[:3]] == before
    assert not (out / "model.safetensors").exists()  # final=False: no final run


def test_a_second_process_joins_the_same_study(text_recipe, tmp_path):
    """--jobs 2 starts one more process on the study's SQLite file; both take trials, the total is kept."""
    import optuna
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(text_recipe(training={**FAST, "num_train_epochs": 4})))
    space = _space(tmp_path, "training.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    proc = subprocess.run([sys.executable, "-m", "hftl.cli", "sweep", str(path), "--space", str(space), "--trials", "6",
                           "--jobs", "2", "--pruner", "none"], capture_output=True, text=True, env=child_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best of the sweep" in proc.stdout and proc.stderr.count("hftl sweep: trial") >= 6
    out = tmp_path / "out"
    study = optuna.load_study(study_name="out", storage=f"sqlite:///{out / 'sweep' / 'study.db'}")
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 6 <= len(done) <= 7 and len({t.user_attrs["pid"] for t in done}) == 2
    assert all(t.state.name == "COMPLETE" for t in done)  # --pruner none reached the second process too
    assert "NopPruner" in (out / "README.md").read_text()  # the card names how trials were stopped


@pytest.mark.parametrize("space, args, message", [
    ("strategy.preseet: {type: categorical, choices: [full]}\n", {}, "strategy.preseet.*Did you mean 'preset'"),
    ("training.learnin_rate: {type: float, low: 0.1, high: 0.2}\n", {}, "learnin_rate.*learning_rate"),
    ("strategy.preset: {type: float, low: 0.0, high: 1.0}\n", {}, "strategy.preset.*from the search space's value 0.0"),
    ("training.num_train_epochs: {type: int, low: 5, high: 2}\n", {}, "low 5 > high 2"),
    ("training.learning_rate: {type: float, low: 0.0, high: 0.1, log: true}\n", {}, "log-scaled, so low must be > 0"),
    ("training.learning_rate: {type: uniform, low: 0.1, high: 0.2}\n", {}, "float | int | categorical"),
    ("training.learning_rate: {type: float, low: 0.1, high: 0.2}\n", {"trials": 0}, "--trials must be at least 1"),
    ("training.learning_rate: {type: float, low: 0.1, high: 0.2}\n", {"storage": "nosuchdb://x"},
     "--storage 'nosuchdb://x' could not be opened"),
])
def test_bad_input_is_one_paragraph_and_writes_nothing(text_recipe, tmp_path, space, args, message):
    recipe = text_recipe(training={"output_dir": str(tmp_path / "out")})
    with pytest.raises(HftlError, match=message) as err:
        hftl.sweep(recipe, _space(tmp_path, space), **{"trials": 2, **args})
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    assert isinstance(err.value, RecipeError) or "storage" in args
