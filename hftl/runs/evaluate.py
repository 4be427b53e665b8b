"""`hftl eval RUN_DIR... [--data FILE|DIR]`: a run's metrics, per-class table, confusion matrix and worst examples.

Default data: the run's own validation split, rebuilt from its saved recipe (so the metrics equal
metrics.json); or any labelled data in the recipe's format, whose labels the run must know. Several runs:
each member's metrics and those of their ensemble (averaged probabilities), side by side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hftl.data import batches, load_raw, load_splits
from hftl.errors import HftlError
from hftl.files import write_json, write_text
from hftl.model import model_device
from hftl.runs.load import Run, load_model, load_processor, prepare_eval, read_run
from hftl.runs.outputs import save_figure
from hftl.runs.predict import check_members


@dataclass
class Scored:
    """Per input: the probabilities (classes,) or per word (words, classes), the true label id(s), what it shows."""

    probs: list
    true: list
    shown: list[str]


def shown_inputs(ds, column: str) -> list[str]:
    """How each row of the raw data is named: its path for files, else its text, else its row number."""
    from datasets import Audio, Image

    feature = ds.features.get(column)
    if isinstance(feature, (Image, Audio)):
        values = ds.cast_column(column, type(feature)(decode=False))[column]
        return [v.get("path") or f"row {i}" for i, v in enumerate(values)]
    if column in ds.column_names:
        return [" ".join(map(str, v)) if isinstance(v, list) else str(v) for v in ds[column]]
    return [f"row {i}" for i in range(len(ds))]


def labelled_data(run: Run, data: str | Path | None, what: str = "--data"):
    """The data to score, labels encoded like the run's: its validation split, or `data` (file or folder). `what`
    names `data` in errors (the CLI flag or the recipe key)."""
    if data is None:
        return load_splits(run.recipe.data, run.recipe.seed, run.task).validation
    return encode_like_run(run, raw_rows(run, data, what), data, what)


def raw_rows(run: Run, data: str | Path, what: str, name_load_errors: bool = False):
    """The rows of a data file or folder in the run's data format, as loaded (labels not encoded).
    `name_load_errors`: a file that does not load is reported under `what` too."""
    p = Path(data)
    if not p.exists():
        raise HftlError(f"{what} '{data}' does not exist: give a data file (csv/json/jsonl/parquet) or a folder.")
    keys = {"dataset_name": None, "train_dir": None, "train_file": None, "validation_dir": None, "validation_file": None}
    keys["train_dir" if p.is_dir() else "train_file"] = str(p)
    try:
        return load_raw(run.recipe.data.model_copy(update=keys), run.task)["train"]
    except HftlError as e:
        if name_load_errors:
            raise HftlError(f"{what} {e}") from None
        raise


def input_rows(run: Run, data: str | Path, what: str):
    """`raw_rows` of a file/folder of inputs for training (self_training.unlabeled, distill.unlabeled ...), checked
    to have rows and the recipe's input column; load errors are reported under `what` (the recipe key)."""
    raw = raw_rows(run, data, what, name_load_errors=True)
    column = run.task.input_column(run.recipe.data)
    if column not in raw.column_names:
        raise HftlError(f"{what} '{data}' has no column '{column}' (the recipe's input column); columns are: "
                        f"{', '.join(raw.column_names)}.")
    if len(raw) == 0:
        raise HftlError(f"{what} '{data}' has no rows.")
    return raw


def encode_like_run(run: Run, raw, data, what: str):
    """`raw` rows with their labels encoded as the run's ids, in a `labels` column."""
    from datasets import Dataset, Features, List

    task = run.task
    column = run.recipe.data.label_column_name or task.label_column
    if column not in raw.column_names:
        raise HftlError(f"{what} '{data}' has no label column '{column}' (the run's data.label_column_name); columns "
                        f"are: {', '.join(raw.column_names)}.")
    names = run.label_names
    feature = task.label_feature(names)
    example = [0] if isinstance(feature, List) else 0  # one row with the run's labels: per word, or per example
    reference = Dataset.from_dict({column: [example]}, features=Features({column: feature}))
    try:
        _, ds, _ = task.encode_labels(reference, raw, column)
    except HftlError as e:
        raise HftlError(f"{what} '{data}' has labels the run never saw: {e} The run knows: {', '.join(names)}.") from None
    return ds.rename_column(column, "labels") if column != "labels" else ds


def score(run: Run, ds, batch_size: int = 32, model=None) -> Scored:
    """The run's model on labelled data `ds` (load_splits' form: a `labels` column), through the task's own
    evaluation preprocessing."""
    model = model if model is not None else load_model(run.path)
    prepared, collate = prepare_eval(run, ds, load_processor(run), model)
    return score_prepared(run.task, model, prepared, collate, shown_inputs(ds, run.task.input_column(run.recipe.data)),
                          batch_size)


def score_prepared(task, model, prepared, collate, shown: list[str], batch_size: int = 32) -> Scored:
    """`score` on data the task already prepared (training hands over its own evaluation set)."""
    import torch

    probs, true = [], []
    for batch in batches(prepared, collate, batch_size, model_device(model)):
        with torch.no_grad():
            logits = task.logits(model, batch.inputs)
        probs += task.probabilities(logits, batch.rows)
        true += true_labels(batch.rows)
    return Scored(probs, true, shown)


def true_labels(rows: list[dict]) -> list:
    """Each prepared row's label id, or per-word ids without the -100 of ignored positions."""
    labels = [r["labels"] for r in rows]
    return [np.asarray(lab)[np.asarray(lab) != -100] if isinstance(lab, list) else lab for lab in labels]


def _arrays(probs: list, true: list) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true ids, (N,) per example or (N, words) padded with -100 for per-word tasks."""
    if np.ndim(true[0]) == 0:
        return np.array([p.argmax() for p in probs]), np.array(true)
    width = max(len(t) for t in true)
    pred = np.full((len(true), width), 0)
    lab = np.full((len(true), width), -100)
    for i, (p, t) in enumerate(zip(probs, true)):
        pred[i, : len(t)], lab[i, : len(t)] = p.argmax(-1), t
    return pred, lab


def metrics_of(run: Run, probs: list, true: list) -> dict:
    pred, lab = _arrays(probs, true)
    return {f"eval_{k}": v for k, v in run.task.metrics_for(run.label_names)((pred, lab)).items()}


def per_class(probs: list, true: list, names: list[str]) -> tuple[list[dict], np.ndarray]:
    """Precision, recall, F1 and support per label (per word tag for NER), and the confusion matrix (true x pred)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y = np.concatenate([np.atleast_1d(t) for t in true])
    p = np.concatenate([np.atleast_1d(np.asarray(q).argmax(-1)) for q in probs])
    ids = list(range(len(names)))
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=ids, zero_division=0)
    rows = [{"label": n, "precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
             "support": int(support[i])} for i, n in enumerate(names)]
    return rows, confusion_matrix(y, p, labels=ids)


def worst(scored: Scored, names: list[str], n: int = 10) -> list[dict]:
    """The inputs the model is most wrong about: lowest probability of the true label (mean over words)."""
    out = []
    for x, p, t in zip(scored.shown, scored.probs, scored.true):
        p = np.asarray(p)
        if np.ndim(t) == 0:
            out.append({"input": x, "label": names[int(t)], "predicted": names[int(p.argmax())],
                        "p_label": float(p[int(t)])})
        elif len(t):
            out.append({"input": x, "tags": [names[int(i)] for i in t], "predicted": [names[int(i)] for i in p.argmax(-1)],
                        "p_label": float(np.mean(p[np.arange(len(t)), t]))})
    return sorted(out, key=lambda r: r["p_label"])[:n]


def per_class_table(rows: list[dict]) -> str:
    lines = ["| label | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['label']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |" for r in rows]
    return "\n".join(lines)


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """Counts and row-normalised (recall per true label), label names on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = min(4 + 0.45 * n, 20)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    for ax, values, name, fmt in ((axes[0], matrix, "counts", "d"), (axes[1], norm, "normalised by true label", ".2f")):
        ax.imshow(values, cmap="Blues", vmin=0)
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
        if n <= 30:
            top = values.max() or 1
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > top / 2 else "black")
    fig.suptitle(title)
    save_figure(fig, path)


def write_report(folder: Path, run: Run, scored: Scored, metrics: dict, source: str) -> dict:
    """eval/: metrics.json, per_class.md, confusion_matrix.png, worst.jsonl. Returns what the card shows."""
    rows, matrix = per_class(scored.probs, scored.true, run.label_names)
    write_json(folder / "metrics.json", {**metrics, "examples": len(scored.true), "data": source})
    table = per_class_table(rows)
    write_text(folder / "per_class.md", table + "\n")
    plot_confusion(matrix, run.label_names, folder / "confusion_matrix.png", f"{run.path.name} on {source}")
    write_text(folder / "worst.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in worst(scored, run.label_names)))
    return {"per_class": rows, "table": table, "confusion": matrix.tolist()}


def evaluate(run_dirs: str | Path | list, data: str | Path | None = None, output: str | Path | None = None,
             batch_size: int = 32) -> dict:
    """{"members": {run: metrics}, "ensemble": metrics (several runs)}; files under `output` (default
    <first run>/eval, or <first run>/eval-ensemble for several)."""
    dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    runs = [read_run(d) for d in dirs]
    check_members(runs)
    if runs[0].task.generates and hasattr(runs[0].task, "score_text") and len(runs) == 1:
        run = runs[0]
        ds = (load_splits(run.recipe.data, run.recipe.seed, run.task).validation if data is None
              else raw_rows(run, data, "--data"))
        where = (Path(data).resolve().parent if data is not None else None)
        metrics = run.task.score_text(load_model(run.path), load_processor(run), run.recipe.data, ds, where, batch_size)
        folder = Path(output) if output else run.path / "eval"
        write_json(folder / "metrics.json", metrics)
        return {"members": {str(run.path): metrics}}
    if runs[0].task.generates:
        raise HftlError(f"hftl eval scores class predictions (per-class table, confusion matrix); '{runs[0].path}' is "
                        f"a {runs[0].task.name} run, which writes text. Its held-out scores are in its metrics.json "
                        "(eval_loss, eval_perplexity; ROUGE and exact match for seq2seq), written when training ended; hftl "
                        "predict RUN_DIR PROMPT... generates from it.")
    source = str(data) if data is not None else "the run's validation split"
    ds = labelled_data(runs[0], data)
    scored = [score(r, ds, batch_size) for r in runs]
    result = {"members": {str(r.path): metrics_of(r, s.probs, s.true) for r, s in zip(runs, scored)}}
    folder = Path(output) if output else runs[0].path / ("eval" if len(runs) == 1 else "eval-ensemble")
    if len(runs) == 1:
        result["report"] = write_report(folder, runs[0], scored[0], result["members"][str(runs[0].path)], source)
        return result
    mean = [np.mean([s.probs[i] for s in scored], axis=0) for i in range(len(scored[0].probs))]
    together = Scored(mean, scored[0].true, scored[0].shown)
    result["ensemble"] = metrics_of(runs[0], mean, together.true)
    result["report"] = write_report(folder, runs[0], together, result["ensemble"], source)
    write_text(folder / "ensemble.md", ensemble_table(result) + "\n")
    return result


def ensemble_table(result: dict) -> str:
    keys = sorted({k for m in result["members"].values() for k in m})
    lines = ["| run | " + " | ".join(k.removeprefix("eval_") for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, m in [*result["members"].items(), ("ensemble (mean probabilities)", result.get("ensemble", {}))]:
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" if k in m else "-" for k in keys) + " |")
    return "\n".join(lines)
