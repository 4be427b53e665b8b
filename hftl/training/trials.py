"""One trial of `hftl sweep` (training/sweep.py): the recipe with the trial's values, validated like any recipe (a
refused combination is a failed trial with its reason, never a crash of the sweep), trained on the training split
minus a seeded, stratified slice and scored on that slice -- never on the recipe's validation set -- every
evaluation reported to Optuna's pruner (MedianPruner by default; the TPE sampler is seeded from the recipe's seed).
The slice is the same in every trial, so frozen-backbone trials of one backbone share the on-disk feature cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from hftl.data import holdout
from hftl.errors import HftlError
from hftl.recipe import Recipe, load_recipe
from hftl.recipe.space import Dimension
from hftl.recipe.yaml_io import apply_overrides
from hftl.tasks import get_task
from hftl.training.features import Feature
from hftl.training.pipeline import TrainResult, train_once

logger = logging.getLogger("hftl")
FINISHED = ("COMPLETE", "PRUNED")  # and FAIL with a reason (refused, or broke): a trial killed mid-way is not


@dataclass
class SweepResult:
    study: Any  # optuna.Study
    best_values: dict
    best_value: float | None
    metric: str
    best_recipe: Path | None
    final: TrainResult | None  # the best values trained on the whole training split (None: no trial completed)


class HeldOut(Feature):
    """A trial's data: the training split minus a seeded, stratified slice, which is scored instead of the
    validation split."""

    name = "sweep_holdout"

    def __init__(self, fraction: float, seed: int):
        self.fraction, self.seed = fraction, seed

    def add_rows(self, s) -> None:
        s.splits = holdout(s.splits, self.fraction, self.seed)


class Chosen(Feature):
    """The final run's card: how its values were chosen."""

    name = "sweep_choice"

    def __init__(self, lines: list[str]):
        self.lines = lines

    def card_lines(self) -> list[str]:
        return self.lines


class Reporter(TrainerCallback):
    """Each evaluation's objective to the trial; a trial the pruner stops ends its training there."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric, self.pruned = trial, metric, False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{self.metric}")
        if value is None:
            return
        self.trial.report(float(value), state.global_step)
        if self.trial.should_prune():
            self.pruned = True
            control.should_training_stop = True


def objective_of(recipe: Recipe) -> tuple[str, str]:
    """(metric, direction): training.metric_for_best_model (greater_is_better as TrainingArguments reads it), else
    accuracy for classification and eval loss for generative tasks."""
    metric = recipe.training.get("metric_for_best_model")
    task = get_task(recipe.task)
    if metric is None:
        metric = "loss" if task.label_column is None else next(iter(task.metric_names))
    metric = metric.removeprefix("eval_")
    greater = recipe.training.get("greater_is_better")
    if greater is None:
        greater = not metric.endswith(("loss", "perplexity"))
    return metric, "maximize" if greater else "minimize"


def open_study(storage: str, name: str, direction: str, seed: int, pruner, worker: int):
    import optuna

    try:
        return optuna.create_study(
            storage=storage, study_name=name, direction=direction, load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed + worker),
            pruner=pruner if pruner is not None else optuna.pruners.MedianPruner(n_startup_trials=2))
    except Exception as e:  # noqa: BLE001 -- any storage failure is the URL's
        raise HftlError(f"hftl sweep --storage '{storage}' could not be opened ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}): give an Optuna storage URL such as "
                        "sqlite:///sweep.db or postgresql://user:password@host/db.") from None


def finished(study) -> int:
    import optuna

    states = {optuna.trial.TrialState[s] for s in FINISHED}
    return sum(t.state in states or (t.state == optuna.trial.TrialState.FAIL and "reason" in t.user_attrs)
               for t in study.get_trials(deepcopy=False))


def _suggest(trial, dim: Dimension):
    if dim.type == "categorical":
        return trial.suggest_categorical(dim.key, list(dim.choices))
    if dim.type == "int":
        return trial.suggest_int(dim.key, int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
    return trial.suggest_float(dim.key, dim.low, dim.high, log=dim.log, step=dim.step)


def with_values(base: dict, values: dict, output_dir: Path | None = None) -> dict:
    """The recipe dict with the dotted `values` set (and output_dir, if given)."""
    overrides = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]
    data = apply_overrides(base, overrides)
    if output_dir is not None:
        data = apply_overrides(data, [f"training.output_dir={output_dir}"])
    return data


class Objective:
    def __init__(self, base: dict, dims: list[Dimension], sweep_dir: Path, metric: str, fraction: float, seed: int):
        self.base, self.dims, self.sweep_dir = base, dims, sweep_dir
        self.metric, self.fraction, self.seed = metric, fraction, seed

    def __call__(self, trial) -> float:
        import optuna

        start = time.perf_counter()
        trial.set_user_attr("pid", os.getpid())  # which process ran it (--jobs, other machines)
        values = {d.key: _suggest(trial, d) for d in self.dims}
        out = self.sweep_dir / f"trial-{trial.number:04d}"
        try:
            recipe = load_recipe({**with_values(self.base, values, out), "overwrite_output_dir": True})
            reporter = Reporter(trial, self.metric)
            result = train_once(recipe, callbacks=[reporter], features=(HeldOut(self.fraction, self.seed),))
        except HftlError as e:
            trial.set_user_attr("reason", str(e))
            raise
        except Exception as e:
            trial.set_user_attr("reason", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
            _drop_weights(out)
        if reporter.pruned:
            trial.set_user_attr("reason", f"pruned at step {result.trainer.state.global_step}")
            raise optuna.TrialPruned()
        value = result.metrics.get(f"eval_{self.metric}")
        if value is None:
            raise HftlError(f"The sweep's objective eval_{self.metric} is not among this run's metrics "
                            f"({', '.join(k for k in result.metrics if k.startswith('eval_'))}): set "
                            "training.metric_for_best_model to one of them.")
        return float(value)


def _drop_weights(out: Path) -> None:
    """A trial keeps its metrics, plan and card; its weights and checkpoints go (the final run retrains)."""
    if not out.is_dir():
        return
    for p in list(out.glob("*.safetensors")) + list(out.glob("checkpoint-*")) + list(out.glob("merged")):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def progress(total: int):
    def line(study, trial) -> None:
        done = finished(study)
        best = ""
        try:
            best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:  # no completed trial yet
            pass
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        reason = trial.user_attrs.get("reason", "")
        print(f"hftl sweep: trial {trial.number} {trial.state.name.lower()} {value} in "
              f"{trial.user_attrs.get('seconds', 0):.0f} s ({done}/{total} finished{best})"
              + (f": {reason[:160]}" if reason and trial.state.name != "COMPLETE" else ""), file=sys.stderr, flush=True)
        if done >= total:
            study.stop()
    return line
