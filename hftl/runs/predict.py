"""`hftl predict RUN_DIR... INPUT...`: a finished run (or an ensemble of runs) on new inputs.

Inputs are files (images, audio clips), folders of them, data files (csv/jsonl/json/parquet with the recipe's
input column) or literal texts; the run's own task preprocesses them (`Task.prepare_inputs`) with the
processor saved in the run. Batched, no gradients, eval mode. Several runs form an ensemble: their
probabilities are averaged (they must share labels).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from hftl.data import batches
from hftl.errors import HftlError
from hftl.model import model_device
from hftl.recipe import GenerationSection
from hftl.runs.load import Run, load_model, load_processor, read_run

logger = logging.getLogger("hftl")
DATA_FILES = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_inputs(run: Run, inputs: list[str]):
    """(the inputs: values of the task's input column, what each row's "input" shows)."""
    from datasets import load_dataset

    task, data = run.task, run.recipe.data
    column = task.input_column(data)
    values, shown = [], []
    for x in inputs:
        p = Path(x)
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in task.input_suffixes)
            if not files:
                raise HftlError(f"Input folder '{x}' holds no files task {task.name} takes "
                                f"({', '.join(task.input_suffixes) or 'it takes texts or data files'}).")
            values += files
            shown += files
        elif p.is_file() and p.suffix.lower() in DATA_FILES:
            ds = load_dataset(DATA_FILES[p.suffix.lower()], data_files=str(p), split="train")
            rows = task.file_inputs(ds, p)
            if rows is not None:
                values += rows[0]
                shown += rows[1]
                continue
            if column not in ds.column_names:
                raise HftlError(f"Input file '{x}' has no column '{column}' (the run's input column); columns are: "
                                f"{', '.join(ds.column_names)}.")
            rows = list(ds[column])
            values += rows
            shown += [" ".join(r) if isinstance(r, list) else r for r in rows]
        elif p.is_file():
            if p.suffix.lower() not in task.input_suffixes:
                kinds = ", ".join(task.input_suffixes) if task.input_suffixes else "texts (as arguments)"
                raise HftlError(f"Input file '{x}' is not something task {task.name} takes: it takes {kinds} or a "
                                f"data file ({', '.join(DATA_FILES)}) with a '{column}' column.")
            values.append(str(p))
            shown.append(str(p))
        else:
            value = task.literal(x)
            if value is None:
                raise HftlError(f"Input '{x}' is not a file or folder, and task {task.name} takes files "
                                f"({', '.join(task.input_suffixes)}) or data files, not literal text.")
            values.append(value)
            shown.append(x)
    if not values:
        raise HftlError("No inputs given: pass files, folders, data files or texts after the run dir(s).")
    return values, shown


def check_members(runs: list[Run]) -> None:
    first = runs[0]
    for r in runs[1:]:
        if r.task.name != first.task.name or r.label_names != first.label_names:
            raise HftlError(f"Ensemble members must share the task and labels: '{first.path}' is {first.task.name} "
                            f"with labels {first.label_names}, '{r.path}' is {r.task.name} with {r.label_names}.")


def run_probabilities(run: Run, dataset, batch_size: int, model=None, processor=None) -> list:
    """The run's per-input probabilities (Task.probabilities) over its labels (`run.label_names`) on an input
    dataset (read_inputs' first part)."""
    import torch
    from tqdm.auto import tqdm

    model = model if model is not None else load_model(run.path)
    processor = processor if processor is not None else load_processor(run)
    data = run.recipe.data
    ds = run.task.prepare_inputs(dataset, processor, data)
    collate = run.task.prediction_collator(processor, data, run.label_names)
    out = []
    steps = -(-len(ds) // batch_size)
    for batch in tqdm(batches(ds, collate, batch_size, model_device(model)), total=steps,
                      desc=f"predict {run.path.name}", disable=steps < 4, leave=False):
        with torch.no_grad():
            logits = run.task.logits(model, batch.inputs)
        out += run.task.probabilities(logits, batch.rows)
    return out


class Predictor:
    """Run dirs read once, their models and processors loaded on first use and kept: `hftl predict` calls it once,
    `hftl serve` for every request (the same preprocessing, the same numbers). Several runs: an ensemble."""

    def __init__(self, run_dirs: str | Path | list):
        dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
        self.runs = [read_run(d) for d in dirs]
        check_members(self.runs)
        if self.task.generates and len(self.runs) > 1:
            raise HftlError(f"Ensembles average class probabilities; task {self.task.name} writes text: use one run "
                            "dir at a time.")
        self._loaded = None

    @property
    def task(self):
        return self.runs[0].task

    @property
    def label_names(self) -> list[str]:
        return self.runs[0].label_names

    def load(self) -> list[tuple]:
        """(model, processor) per run, loaded once (an adapter run's base too)."""
        if self._loaded is None:
            self._loaded = [(load_model(r.path), load_processor(r)) for r in self.runs]
        return self._loaded

    def with_labels(self, labels: list[str] | None) -> list[Run]:
        """The runs, with other class names where the model reads them (zero-shot); refused for a fixed head."""
        if not labels:
            return self.runs
        if not self.task.open_labels:
            raise HftlError(f"--labels names the classes of a zero-shot run, whose model reads class names; task "
                            f"{self.task.name} has a head for the labels it was trained on: {self.label_names}.")
        return [replace(r, label_names=list(labels)) for r in self.runs]

    def __call__(self, values: list, shown: list[str], top_k: int | None = None, batch_size: int = 32,
                 labels: list[str] | None = None) -> list[dict]:
        """One dict per input value (read_inputs' pairs, or what the web app hands over)."""
        runs = self.with_labels(labels)
        if self.task.generates:
            return self._generate(values, shown)
        import numpy as np
        from datasets import Dataset

        dataset = Dataset.from_dict({self.task.input_column(runs[0].recipe.data): values})
        members = [run_probabilities(r, dataset, batch_size, model, processor)
                   for r, (model, processor) in zip(runs, self.load())]
        if len(runs) > 1:
            logger.info("ensemble of %d runs (probabilities averaged): %s", len(runs),
                        ", ".join(str(r.path) for r in runs))
        names = runs[0].label_names
        k = top_k if top_k is not None else (None if len(names) <= 10 else 5)
        return [{"input": x, **self.task.prediction(np.mean([m[i] for m in members], axis=0), names, k)}
                for i, x in enumerate(shown)]

    def _generate(self, values: list, shown: list[str]) -> list[dict]:
        """A text-writing run (causal-lm, seq2seq, image-text-to-text): {"input", "generated_text"} per prompt,
        decoded as the run's generation block says (seeded sampling, or greedy at temperature 0)."""
        run = self.runs[0]
        model, processor = self.load()[0]
        generation = run.recipe.generation or GenerationSection()
        completions = run.task.generate(model, processor, run.recipe.data, generation, values)
        return [{"input": x, "generated_text": c} for x, c in zip(shown, completions)]


def predict(run_dirs: str | Path | list, inputs: list[str], top_k: int | None = None, batch_size: int = 32,
            labels: list[str] | None = None) -> list[dict]:
    """One dict per input: {"input", "label", "score", "scores": {label: probability}} (NER: "tags", "scores"
    per word; causal-lm and seq2seq: "generated_text"). Several run dirs: the ensemble of their averaged probabilities.
    `labels`: other class names for a run whose model reads them (zero-shot)."""
    predictor = Predictor(run_dirs)
    predictor.with_labels(labels)  # a closed-label run refuses them before anything loads
    values, shown = read_inputs(predictor.runs[0], list(inputs))
    return predictor(values, shown, top_k, batch_size, labels)
