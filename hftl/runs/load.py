"""A finished run directory: what it is (recipe, task, labels) and its model, rebuilt without the training flow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftl.errors import HftlError


@dataclass
class Run:
    """A run directory read back: its resolved recipe, its Task and its label names."""

    path: Path
    recipe: Any
    task: Any
    label_names: list[str]

    @property
    def is_adapter(self) -> bool:
        return (self.path / "adapter_config.json").is_file()


def read_run(output_dir: str | Path) -> Run:
    from hftl.recipe import load_recipe
    from hftl.tasks import get_task

    out = Path(output_dir)
    if not out.is_dir():
        raise HftlError(f"'{out}' is not a folder: give the output dir of an hftl run (training.output_dir).")
    if not (out / "recipe.yaml").is_file():
        raise HftlError(f"'{out}' is not an hftl output dir (no recipe.yaml).")
    recipe = load_recipe(out / "recipe.yaml")
    labels = json.loads((out / "labels.json").read_text()) if (out / "labels.json").is_file() else []
    return Run(out, recipe, get_task(recipe.task), labels)


def load_model(output_dir: str | Path):
    """Rebuild a trained model from an output dir: the full model, or base + adapter for PEFT runs."""
    from hftl import models

    run = read_run(output_dir)
    out, recipe, task, labels = run.path, run.recipe, run.task, run.label_names
    if run.is_adapter:
        from peft import PeftModel

        base = models.build_model(task, recipe.model, labels, recipe.data)
        task.configure_model(base, recipe.model)
        model = PeftModel.from_pretrained(base, str(out))
    else:
        from hftl.pooling import load_portable, needs_remote_code

        # A pooled run is built from hftl's own copy of its code: no trust_remote_code here.
        model = load_portable(out) if needs_remote_code(out) else task.model_class(recipe.data).from_pretrained(str(out))
    return model.eval()


def load_processor(run: Run):
    """The processor saved in the run (tokenizer / image processor / feature extractor), loaded by its task."""
    section = run.recipe.model.model_copy(update={
        "tokenizer_name": None, "image_processor_name": None, "feature_extractor_name": None, "model_revision": "main"})
    try:
        return run.task.load_processor(section, str(run.path), run.recipe.data)
    except (OSError, ValueError) as e:
        raise HftlError(f"'{run.path}' has no loadable processor files ({str(e).splitlines()[0] if str(e) else e}): "
                        "the run dir is incomplete.") from None
