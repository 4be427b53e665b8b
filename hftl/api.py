"""hftl's public API: `import hftl` gives these names (hftl/__init__.py loads this module on first use).

    recipe = hftl.load_recipe("recipes/demo.yaml", overrides=["training.num_train_epochs=1"])
    result = hftl.train(recipe)                  # .model, .trainer, .metrics, .output_dir, .plan
    model = hftl.load_model(result.output_dir)   # full model, or base + adapter for PEFT runs

The training stack (torch, transformers) loads only when a function needs it, so `hftl validate` stays light.
"""

from __future__ import annotations

from pathlib import Path

from hftl.errors import HftlError, RecipeError
from hftl.recipe import Recipe, load_recipe

__all__ = ["HftlError", "Recipe", "RecipeError", "adapt", "evaluate", "export", "load_model",
           "load_recipe", "lr_find", "plan", "predict", "serve", "serve_app", "sweep", "train"]


def _recipe(recipe, overrides) -> Recipe:
    return recipe if isinstance(recipe, Recipe) and not overrides else load_recipe(recipe, overrides)


def train(recipe: Recipe | str | dict, overrides: list[str] | None = None, callbacks: list | None = None):
    """Run a recipe end to end and return a TrainResult (model, trainer, metrics, output dir, plan).

    `callbacks`: extra `transformers.TrainerCallback`s (after hftl's own). A recipe with `self_training:` runs its
    rounds; the result is the last round's, with `rounds` holding one record per round."""
    recipe = _recipe(recipe, overrides)
    if recipe.self_training is not None:
        from hftl.training.loops import self_train

        return self_train(recipe, callbacks)
    from hftl.training.pipeline import train_once

    return train_once(recipe, callbacks)


def sweep(recipe: Recipe | str | dict, space: str | Path, trials: int, overrides: list[str] | None = None, **kwargs):
    """Search the keys in `space` (a YAML file: dotted keys -> Optuna distributions) over `trials` trials, each
    scored on a held-out slice of the training split, then train the best values on the whole split. kwargs:
    storage, study_name, timeout, jobs, val_fraction, pruner (an optuna pruner), final. -> SweepResult (study,
    best_values, best_value, metric, best_recipe, final: the TrainResult of the best values)."""
    from hftl.training.sweep import run_sweep

    return run_sweep(recipe, space, trials, overrides=overrides, **kwargs)


def plan(recipe: Recipe | str | dict, overrides: list[str] | None = None) -> str:
    """The plan table for a recipe (what `hftl plan` / `hftl train --dry-run` print). Writes nothing."""
    from hftl.training.setup import setup

    return setup(_recipe(recipe, overrides)).plan.table()


def lr_find(recipe: Recipe | str | dict, overrides: list[str] | None = None, **kwargs):
    """fastai's learning-rate range test through the recipe's own Trainer (see hftl/training/lr_find.py)."""
    from hftl.training.lr_find import lr_find as run

    return run(recipe, overrides, **kwargs)


def adapt(run_dir: str | Path, unlabeled: str | Path, output_dir: str | Path | None = None, **kwargs):
    """Self-training rounds that start from a finished run (see hftl/training/loops.py)."""
    from hftl.training.loops import adapt as run

    return run(run_dir, unlabeled, output_dir, **kwargs)


def load_model(output_dir: str | Path):
    """A run's model: the full model, base + adapter for PEFT runs, an ONNX Runtime model for ONNX exports."""
    from hftl.runs.load import load_model as load

    return load(output_dir)


def predict(run_dirs, inputs: list[str], top_k: int | None = None, batch_size: int = 32,
            labels: list[str] | None = None) -> list[dict]:
    """One dict per input (see hftl/runs/predict.py); several run dirs predict as an ensemble; `labels`: other class
    names for zero-shot runs."""
    from hftl.runs.predict import predict as run

    return run(run_dirs, inputs, top_k=top_k, batch_size=batch_size, labels=labels)


def serve(run_dirs, host: str = "127.0.0.1", port: int = 7860, top_k: int | None = None, block: bool = True):
    """A Gradio web app and HTTP API (`/predict`) for a run or an ensemble (see hftl/runs/serve.py). block=False
    returns (app, url) while it serves; app.close() stops it."""
    from hftl.runs.serve import serve as run

    return run(run_dirs, host=host, port=port, top_k=top_k, block=block)


def serve_app(run_dirs, top_k: int | None = None):
    """The gr.Blocks app `serve` runs, models loaded, not launched: `.launch()` it yourself (a Space's app.py does)."""
    from hftl.runs.serve import serve_app as build

    return build(run_dirs, top_k=top_k)


def evaluate(run_dirs, data: str | Path | None = None, output: str | Path | None = None, batch_size: int = 32) -> dict:
    """Metrics, per-class table, confusion matrix and worst examples of a run or an ensemble."""
    from hftl.runs.evaluate import evaluate as run

    return run(run_dirs, data, output, batch_size)


def export(run_dir: str | Path, **kwargs) -> Path:
    """A run as a merged, ONNX, INT8, pruned or GGUF model folder (see hftl/runs/export.py)."""
    from hftl.runs.export import export as run

    return run(run_dir, **kwargs)


def __getattr__(name):
    if name == "TrainResult":
        from hftl.training.pipeline import TrainResult

        return TrainResult
    raise AttributeError(f"module 'hftl.api' has no attribute {name!r}")
