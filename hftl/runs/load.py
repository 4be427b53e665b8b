"""A finished run directory: what it is (recipe, task, labels) and its model, rebuilt without the training flow."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftl.data import Splits
from hftl.errors import HftlError
from hftl.model import build_model, load_portable, needs_remote_code
from hftl.model import load_processor as load_checkpoint_processor
from hftl.recipe import load_recipe
from hftl.runs.onnx_model import OnnxModel
from hftl.tasks import get_task


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
    out = Path(output_dir)
    if not out.is_dir():
        raise HftlError(f"'{out}' is not a folder: give the output dir of an hftl run (training.output_dir).")
    if not (out / "recipe.yaml").is_file():
        raise HftlError(f"'{out}' is not an hftl output dir (no recipe.yaml).")
    recipe = load_recipe(out / "recipe.yaml")
    labels = json.loads((out / "labels.json").read_text()) if (out / "labels.json").is_file() else []
    return Run(out, recipe, get_task(recipe.task), labels)


RUN_FILES = ("recipe.yaml", "labels.json")  # what read_run reads: they make a model folder an hftl run
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


def check_weights(run: Run) -> None:
    """The run's weights are there and every safetensors file opens (a copy cut short fails here, clearly)."""
    from safetensors import safe_open

    out = run.path
    if not any((out / name).is_file() for name in WEIGHT_FILES):
        gguf = sorted(out.glob("*.gguf"))
        if gguf:
            raise HftlError(f"'{out}' is a GGUF export ({gguf[0].name}, hftl export --gguf): run it in llama.cpp, "
                            "Ollama or LM Studio; hftl predicts and evaluates with the run it came from.")
        raise HftlError(f"'{out}' holds no model weights (model.safetensors, or adapter_model.safetensors for a PEFT "
                        "run): the run did not get to save its model. Train it again, or point at the folder that "
                        "holds the weights.")
    for path in sorted(out.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception as e:  # SafetensorError: "incomplete metadata, file not fully covered", bad header ...
            raise HftlError(f"The weights file '{path}' ({path.stat().st_size:,} bytes) is truncated or corrupt "
                            f"(safetensors: {str(e).strip() or type(e).__name__}): copy it again from where the run "
                            "was trained, or train again.") from None


def load_model(output_dir: str | Path):
    """Rebuild a trained model from an output dir: the full model, or base + adapter for PEFT runs; for an ONNX
    export (model.onnx, `hftl export --onnx/--int8`) an ONNX Runtime model called the same way."""
    run = read_run(output_dir)
    out, recipe, task, labels = run.path, run.recipe, run.task, run.label_names
    if (out / "model.onnx").is_file():
        return OnnxModel(out, labels)
    check_weights(run)
    if run.is_adapter:
        from peft import PeftModel

        base = build_model(task, recipe.model, labels, recipe.data)
        task.configure_model(base, recipe.model)
        task.reload_base(base, out)
        model = PeftModel.from_pretrained(base, str(out))
    else:
        # A pooled run is built from hftl's own copy of its code: no trust_remote_code here.
        model = load_portable(out) if needs_remote_code(out) else task.model_class(recipe.data).from_pretrained(str(out))
    return model.eval()


def load_base(run: Run):
    """The model the run started from, rebuilt from its recipe: the checkpoint, with any new part (a head, a dual
    encoder's projections) initialised as the run's was, from the recipe's seed."""
    from transformers import set_seed

    set_seed(run.recipe.seed)
    base = build_model(run.task, run.recipe.model, run.label_names, run.recipe.data)
    run.task.configure_model(base, run.recipe.model)
    return base.eval()


def load_processor(run: Run):
    """The processor saved in the run (tokenizer / image processor / feature extractor), loaded by its task."""
    section = run.recipe.model.model_copy(update={
        "tokenizer_name": None, "image_processor_name": None, "feature_extractor_name": None, "model_revision": "main"})
    return load_checkpoint_processor(run.task, section, run.recipe.data, run_dir=str(run.path))


def prepare_eval(run: Run, ds, processor, model):
    """(prepared dataset, collator): labelled data `ds` through the task's evaluation preprocessing. prepare()
    takes a training split too: a few rows of `ds` stand in, so nothing is preprocessed or checked twice."""
    stand_in = ds.select(range(min(8, len(ds))))
    _, prepared, collate = run.task.prepare(Splits(stand_in, ds, run.label_names), processor, run.recipe.data, model)
    return prepared, collate
