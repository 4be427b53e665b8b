"""Every shipped recipe runs as shipped where its sources are reachable: the ones whose model and data are
offline (zoo aliases) train a few steps here; the ones that need the Hub stop offline with one clear error."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hftl
from hftl import zoo

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
FEW_STEPS = ["training.max_steps=2", "data.max_train_samples=64", "data.max_eval_samples=32",
             "training.save_strategy=no", "training.eval_strategy=no"]


def offline(recipe) -> bool:
    return recipe.model.model_name_or_path.startswith(zoo.PREFIX) and (recipe.data.dataset_name or "").startswith(zoo.PREFIX)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_runs(path, zoo_cache, tmp_path):
    recipe = hftl.load_recipe(path)
    out = tmp_path / "out"
    if offline(recipe):
        result = hftl.train(path, overrides=[*FEW_STEPS, f"training.output_dir={out}"])
        assert result.trainer.state.global_step == 2
        from hftl.tasks import get_task

        headline = "eval_" + next(iter(get_task(recipe.task).metric_names))  # accuracy, perplexity, ...
        assert math.isfinite(result.metrics[headline]) and result.metrics[headline] >= 0.0
        if headline == "eval_accuracy":
            assert result.metrics[headline] <= 1.0
        assert (out / "recipe.yaml").is_file() and (out / "README.md").is_file()
        return
    # Needs the Hub: offline it is one paragraph naming the source, exit 1, nothing written.
    proc = subprocess.run([sys.executable, "-m", "hftl.cli", "train", str(path), f"training.output_dir={out}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "Recipe key 'data.dataset_name'" in proc.stderr or "Recipe key 'model.model_name_or_path'" in proc.stderr
    assert not out.exists()
