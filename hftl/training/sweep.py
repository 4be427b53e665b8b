"""`hftl sweep`: search a recipe's keys -- strategy, depth, PEFT rank, learning rate -- with Optuna, resumably,
several processes or machines on one study (the trials: training/trials.py).

What a sweep leaves in `<output_dir>/sweep/`: study.db (the default SQLite storage), trials.csv, best_recipe.yaml,
Optuna's optimisation-history and parameter-importance plots, one trial-NNNN folder per trial (metrics, plan and
card; weights dropped); and in `<output_dir>` itself the final run: the best values on the whole training split,
scored once on the validation set, its card saying how they were chosen.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from hftl.errors import RecipeError
from hftl.files import write_text
from hftl.recipe import load_recipe
from hftl.recipe.space import load_space
from hftl.training.pipeline import train_once
from hftl.training.trials import (
    Chosen,
    Objective,
    SweepResult,
    finished,
    objective_of,
    open_study,
    progress,
    with_values,
)

logger = logging.getLogger("hftl")


def trials_csv(study, dims) -> str:
    """One row per trial: number, state, objective, seconds, reason, then the values."""
    keys = [d.key for d in dims]
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["trial", "state", "value", "seconds", "reason", *keys])
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        w.writerow([t.number, t.state.name, "" if t.value is None else t.value, t.user_attrs.get("seconds", ""),
                    t.user_attrs.get("reason", ""), *[t.params.get(k, "") for k in keys]])
    return out.getvalue()


def plots(study, sweep_dir: Path) -> list[str]:
    """Optuna's matplotlib optimisation history and (two or more completed trials) parameter importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as vis

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    written = []
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    makers = [("history.png", vis.plot_optimization_history)] if complete else []
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        makers.append(("importances.png", vis.plot_param_importances))
    for name, make in makers:
        try:
            ax = make(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(sweep_dir / name, dpi=100)
            plt.close(fig)
            written.append(name)
        except (ValueError, RuntimeError) as e:  # e.g. importances of a space with a single value left
            logger.info("sweep plot %s skipped: %s", name, e)
    return written


def write_reports(study, base: dict, dims, sweep_dir: Path, metric: str, fraction: float, final: bool) -> SweepResult:
    write_text(sweep_dir / "trials.csv", trials_csv(study, dims))
    plots(study, sweep_dir)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        logger.warning("hftl sweep: no trial completed; see %s for the reasons", sweep_dir / "trials.csv")
        return SweepResult(study, {}, None, metric, None, None)
    best = study.best_trial
    recipe = load_recipe({**with_values(base, best.params), "overwrite_output_dir": True})
    best_path = sweep_dir / "best_recipe.yaml"
    write_text(best_path, recipe.to_yaml())
    states = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    chosen = ", ".join(f"{k}: {best.params[k]}" for k in best.params)
    lines = ["", "## How this run's values were chosen", "",
             f"- `hftl sweep` (Optuna, TPE sampler, {type(study.pruner).__name__}) over "
             f"{', '.join(d.key for d in dims)}: "
             f"{len(study.trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}), each "
             f"trained on the training split minus a seeded, stratified {fraction:.0%} slice and scored on that slice "
             f"(eval_{metric}, {study.direction.name.lower()}d); the validation set was not seen until this run.",
             f"- Best: trial {best.number}, eval_{metric} {best.value:.4f} on the slice: {chosen}.",
             "- This run: those values on the whole training split (sweep/best_recipe.yaml); every trial in "
             "sweep/trials.csv, the search in sweep/history.png."]
    run = train_once(recipe, features=(Chosen(lines),)) if final else None
    return SweepResult(study, dict(best.params), best.value, metric, best_path, run)


def _workers(command: list[str], jobs: int) -> list[subprocess.Popen]:
    """jobs - 1 more processes on the same study (one GPU each where there are several)."""
    import torch

    gpus = torch.cuda.device_count()
    procs = []
    for i in range(1, jobs):
        env = dict(os.environ, HFTL_SWEEP_WORKER=str(i))
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        procs.append(subprocess.Popen([*command, "--worker"], env=env))
    return procs


def run_sweep(recipe, space, trials: int, storage: str | None = None, study_name: str | None = None,
              timeout: float | None = None, jobs: int = 1, val_fraction: float = 0.2, overrides=None, pruner=None,
              final: bool = True, report: bool = True) -> SweepResult:
    """See the module docstring. `pruner`: "median" (default), "none" or any Optuna pruner; `final`: train the best
    values on the whole training split at the end; `report`: write trials.csv, the plots and best_recipe.yaml."""
    import optuna

    base_recipe = load_recipe(recipe, overrides)
    if trials < 1:
        raise RecipeError(f"hftl sweep --trials must be at least 1 (got {trials}).")
    if not 0 < val_fraction < 1:
        raise RecipeError(f"hftl sweep --val-fraction must be between 0 and 1 (got {val_fraction}): the share of the "
                          "training split the trials are scored on.")
    if jobs < 1:
        raise RecipeError(f"hftl sweep --jobs must be at least 1 (got {jobs}).")
    named = pruner if isinstance(pruner, str) or pruner is None else None
    if named not in (None, "median", "none"):
        raise RecipeError(f"hftl sweep --pruner must be median or none (got {pruner!r}); from Python, any Optuna "
                          "pruner.")
    if named == "none":
        pruner = optuna.pruners.NopPruner()
    elif named == "median":
        pruner = None  # open_study's default
    base = base_recipe.to_dict()
    dims = load_space(space, base)
    metric, direction = objective_of(base_recipe)
    out = base_recipe.output_dir
    sweep_dir = out / "sweep"
    if out.is_dir() and any(out.iterdir()) and not sweep_dir.is_dir() and not base_recipe.overwrite_output_dir:
        raise RecipeError(f"Recipe key 'training.output_dir': '{out}' is not empty and holds no sweep to continue. "
                          "Choose another folder, or set overwrite_output_dir: true.")
    created = [p for p in (out, sweep_dir) if not p.exists()]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    name = study_name or out.name
    worker = int(os.environ.get("HFTL_SWEEP_WORKER", "0"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = open_study(storage, name, direction, base_recipe.seed, pruner, worker)
    except Exception:
        for p in created:  # nothing half-written for a sweep that did not start
            shutil.rmtree(p, ignore_errors=True)
        raise
    procs = []
    if jobs > 1:
        write_text(sweep_dir / "recipe.yaml", base_recipe.to_yaml())
        command = [sys.executable, "-m", "hftl.cli", "sweep", str(sweep_dir / "recipe.yaml"), "--space", str(space),
                   "--trials", str(trials), "--storage", storage, "--study-name", name,
                   "--val-fraction", str(val_fraction)] + (["--timeout", str(timeout)] if timeout else []) \
            + (["--pruner", named] if named else [])
        procs = _workers(command, jobs)
    left = trials - finished(study)
    if left > 0:
        study.optimize(Objective(base, dims, sweep_dir, metric, val_fraction, base_recipe.seed), timeout=timeout,
                       callbacks=[progress(trials)], catch=(Exception,), gc_after_trial=True)
    for p in procs:
        p.wait()
    if not report:  # a --jobs process: the one that started it writes the reports
        return SweepResult(study, {}, None, metric, None, None)
    return write_reports(study, base, dims, sweep_dir, metric, val_fraction, final)
