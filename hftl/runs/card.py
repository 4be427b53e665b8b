"""The model card (README.md of a run), built with huggingface_hub's ModelCard / ModelCardData / EvalResult.

The metadata is what the Hub reads: base_model (a Hub id, never a path on this disk), pipeline_tag,
library_name, datasets, tags and a model-index with the run's evaluation results. The body keeps hftl's
own sections: data, results (final and per evaluation), the adapter, how to use the run (code the tests
execute), the transfer plan, the training arguments and the framework versions.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from hftl import zoo
from hftl.model import is_local_path
from hftl.recipe.training import trains
from hftl.tasks.labels import label_config


def usage_snippet(recipe, task, label_names: list[str], pooling: str, adapter: bool, merged: bool) -> str:
    """Python that loads this run with the ecosystem's own loaders (run by the tests). `task`: the run's Task,
    which gives the pipeline's example input and options and the PEFT loading lines."""
    example = task.example_input
    trunc = task.pipeline_options
    name = task.pipeline_tag or task.name
    head = [f'model_id = "{recipe.output_dir}"  # this folder, or its Hub repo id']
    pooled = pooling != "default"
    custom = task.usage(recipe.data, adapter, label_names)
    if custom is not None:
        cut = custom.index("") + 1  # imports, then the code that needs model_id
        return "\n".join([*custom[:cut], *head, *custom[cut:]])
    if not adapter:
        remote = ", trust_remote_code=True" if pooled else ""
        note = ([f"# trust_remote_code: the {pooling} pooling the classifier was trained on ships as code in this "
                 "folder (hftl_pooling.py);", "# without it transformers refuses to load the model."] if pooled else [])
        return "\n".join([*task.example_imports, "from transformers import pipeline", "", *head, *note,
                          f'classifier = pipeline("{name}", model=model_id{trunc}{remote})',
                          f"print(classifier({example}))"])
    if pooled:
        lines = ["import hftl", "", *head,
                 f"# The adapter was trained on {pooling} pooling, which PEFT's loaders do not restore (they put it on",
                 "# the base model's own pooler): load it with hftl, or use the merged model.",
                 "model = hftl.load_model(model_id)"]
        if merged:
            lines += ["", "from transformers import pipeline", "",
                      f'classifier = pipeline("{name}", model=f"{{model_id}}/merged"{trunc}, trust_remote_code=True)',
                      f"print(classifier({example}))"]
        return "\n".join(lines)
    labels = "".join(f", {k}={v!r}" for k, v in label_config(label_names).items()) if label_names else ""
    lines = task.adapter_usage(labels)
    cut = lines.index("") + 1
    return "\n".join([*task.example_imports, *lines[:cut], *head, *lines[cut:], f"print(classifier({example}))"])


def _shown(source: str) -> str:
    """A Hub id or zoo alias as is; a local path by its last part only (a card must not map the trainer's disk)."""
    return f"{Path(source).name} (a local folder or file)" if is_local_path(source) else source


def _dataset(recipe) -> tuple[str | None, str]:
    """(Hub dataset id or None, the name to show) of the training data."""
    source = recipe.data.dataset_name or recipe.data.train_dir or recipe.data.train_file
    if source.startswith(zoo.PREFIX):
        return zoo.dataset_hub_id(source), source
    if recipe.data.dataset_name and not is_local_path(source):
        return source, source
    return None, _shown(source)


def card_data(recipe, task, metrics: dict, adapter: bool, base_model: str | None):
    from huggingface_hub import EvalResult, ModelCardData

    dataset_id, dataset_shown = _dataset(recipe)
    split = recipe.data.validation_split_name or ("validation" if recipe.data.validation_dir or
                                                  recipe.data.validation_file or recipe.data.dataset_name else
                                                  f"{recipe.data.train_val_split:g} of train (held out)")
    tag = task.pipeline_tag or recipe.task
    results = [EvalResult(task_type=tag, dataset_type=dataset_id or "custom", dataset_name=dataset_shown,
                          dataset_config=recipe.data.dataset_config_name, dataset_split=split, metric_type=key,
                          metric_name=name, metric_value=round(float(metrics[f"eval_{key}"]), 4))
               for key, name in task.metric_names.items() if isinstance(metrics.get(f"eval_{key}"), (int, float))]
    tags = ["hftl", "transfer-learning", recipe.task] + ([str(recipe.peft.method).lower()] if adapter else [])
    return ModelCardData(
        base_model=base_model, datasets=[dataset_id] if dataset_id else None, library_name="peft" if adapter else
        "transformers", pipeline_tag=tag, tags=tags, metrics=list(task.metric_names) if results else None,
        model_name=recipe.output_dir.name, eval_results=results or None)


def _versions() -> list[str]:
    out = []
    for name in ("hftl", "transformers", "peft", "torch", "datasets", "tokenizers", "timm", "accelerate"):
        try:
            out.append(f"- {name} {version(name)}")
        except PackageNotFoundError:
            continue
    return out


def _per_evaluation(log_history: list[dict], metric_names) -> list[str]:
    evals = [e for e in log_history if "eval_loss" in e]
    keys = [k for k in ("eval_loss", *(f"eval_{m}" for m in metric_names)) if any(k in e for e in evals)]
    if len(evals) < 2:
        return []
    lines = ["", "Per evaluation:", "", "| epoch | step | " + " | ".join(k.removeprefix("eval_") for k in keys) + " |",
             "|---:|---:|" + "---:|" * len(keys)]
    for e in evals:
        cells = " | ".join(f"{e[k]:.4f}" if isinstance(e.get(k), float) else "-" for k in keys)
        lines.append(f"| {e.get('epoch', 0):.2f} | {e.get('step', '-')} | {cells} |")
    return lines


def model_card(recipe, task, metrics: dict, plan_table: str, preprocessing: str, label_names: list[str],
               adapter: dict | None, n_train: int, n_eval: int, usage: str = "", base_model: str | None = None,
               log_history: list[dict] | None = None, evaluation: dict | None = None,
               extra: list[str] | None = None) -> str:
    """The README.md text: ModelCard metadata + hftl's sections."""
    from huggingface_hub import ModelCard

    base = recipe.model.source
    data = card_data(recipe, task, metrics, adapter is not None, base_model)
    how = f"({'PEFT ' + adapter['method'] if adapter else 'strategy: ' + (recipe.strategy.preset or 'custom')})"
    intro = (f"Fine-tuned from `{base_model or _shown(base)}` for **{recipe.task}** with hftl {how}." if trains(recipe.training)
             else f"`{base_model or _shown(base)}` scored as it is for **{recipe.task}** with hftl: "
                  "`num_train_epochs: 0`, no training step (a baseline).")
    lines = [f"# {recipe.output_dir.name}", "", intro]
    if not base_model:
        lines += ["", f"The base model is a local folder ({_shown(base)}) with no known Hub id: set hub.base_model "
                      "(or `hftl push --base-model`) so the Hub and PEFT's loaders can find it."]
    lines += [
        "",
        "## Data",
        "",
        f"- source: `{_dataset(recipe)[1]}`" + (f" (config `{recipe.data.dataset_config_name}`)"
                                               if recipe.data.dataset_config_name else ""),
        f"- train examples: {n_train}, evaluation examples: {n_eval}",
        *([f"- labels ({len(label_names)}): {', '.join(label_names)}"] if label_names else []),
        f"- preprocessing: {preprocessing}",
        "",
        "## Results",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    for k, v in sorted(metrics.items()):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += _per_evaluation(log_history or [], task.metric_names)
    if evaluation:
        lines += ["", "Per label on the evaluation set (`hftl eval` writes the same into eval/):", "", evaluation["table"],
                  "", "![confusion matrix](eval/confusion_matrix.png)"]
    lines += extra or []
    if adapter:
        lines += ["", "## Adapter", "", "| setting | value |", "|---|---|"]
        for k, v in adapter.items():
            lines.append(f"| {k} | {', '.join(map(str, v)) if isinstance(v, list) else v} |")
    if usage:
        lines += ["", "## How to use", "", "```python", usage, "```"]
    lines += ["", "## Transfer strategy", "", plan_table, "", "## Training", "",
              "| argument | value |", "|---|---|"]
    for k, v in sorted(recipe.training.items()):
        if k in ("output_dir", "logging_dir"):  # this machine's folders
            continue
        lines.append(f"| {k} | {v} |")
    lines += ["", "Reproduce with `hftl train recipe.yaml` (the resolved recipe saved beside this card).", "",
              "## Framework versions", "", *_versions(), ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))
