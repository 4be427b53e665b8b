"""What a run leaves in its output dir besides the Trainer's checkpoints: metrics, curves, plan, model card."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode the umask gives an ordinary new file (0o644 under umask 022)."""
    return 0o666 & ~umask()


def fix_modes(folder: Path) -> None:
    """Give every file under `folder` the umask's ordinary mode. Temp-file writers create 0600 files
    (mkstemp; safetensors >= 0.8 for weights, safetensors#782), which a teammate or a serving container
    could not read."""
    mode = file_mode()
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink() and (p.stat().st_mode & 0o777) != mode:
            os.chmod(p, mode)


def write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def epoch_curves(log_history: list[dict]) -> dict[str, list]:
    """Per-epoch train loss (mean of the logged losses in that epoch), eval loss and eval accuracy."""
    train: dict[int, list[float]] = {}
    evals = []
    for entry in log_history:
        if "loss" in entry and "epoch" in entry:
            # a loss logged at epoch 0.25 .. 1.0 belongs to the first epoch (index 0)
            train.setdefault(max(0, math.ceil(entry["epoch"] - 1e-9) - 1), []).append(entry["loss"])
        if "eval_loss" in entry:
            evals.append(entry)
    return {
        "train_epoch": [e + 1 for e in sorted(train)],
        "train_loss": [sum(train[e]) / len(train[e]) for e in sorted(train)],
        "eval_epoch": [round(e.get("epoch", i + 1), 3) for i, e in enumerate(evals)],
        "eval_loss": [e["eval_loss"] for e in evals],
        "eval_accuracy": [e.get("eval_accuracy") for e in evals],
    }


def plot_curves(log_history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = epoch_curves(log_history)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if c["train_loss"]:
        ax1.plot(c["train_epoch"], c["train_loss"], "o-", label="train loss")
    if c["eval_loss"]:
        ax1.plot(c["eval_epoch"], c["eval_loss"], "s-", label="eval loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    acc = [(e, a) for e, a in zip(c["eval_epoch"], c["eval_accuracy"]) if a is not None]
    if acc:
        ax2.plot([e for e, _ in acc], [a for _, a in acc], "s-", color="tab:green", label="eval accuracy")
        ax2.set_ylim(0, 1.02)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


EXAMPLE_INPUTS = {"text-classification": '"I love this!"', "image-classification": '"path/to/image.jpg"'}


def usage_snippet(recipe, label_names: list[str], pooling: str, adapter: bool, merged: bool) -> str:
    """Python that loads this run with the ecosystem's own loaders (run by the tests)."""
    task = recipe.task
    text = task == "text-classification"
    example = EXAMPLE_INPUTS[task]
    trunc = ", truncation=True" if text else ""
    head = [f'model_id = "{recipe.output_dir}"  # this folder, or its Hub repo id']
    pooled = pooling != "default"
    if not adapter:
        remote = ", trust_remote_code=True" if pooled else ""
        note = ([f"# trust_remote_code: the {pooling} pooling the classifier was trained on ships as code in this "
                 "folder (hftl_pooling.py);", "# without it transformers refuses to load the model."] if pooled else [])
        return "\n".join(["from transformers import pipeline", "", *head, *note,
                          f'classifier = pipeline("{task}", model=model_id{trunc}{remote})',
                          f"print(classifier({example}))"])
    if pooled:
        lines = ["import hftl", "", *head,
                 f"# The adapter was trained on {pooling} pooling, which PEFT's loaders do not restore (they put it on",
                 "# the base model's own pooler): load it with hftl, or use the merged model.",
                 "model = hftl.load_model(model_id)"]
        if merged:
            lines += ["", "from transformers import pipeline", "",
                      f'classifier = pipeline("{task}", model=f"{{model_id}}/merged"{trunc}, trust_remote_code=True)',
                      f"print(classifier({example}))"]
        return "\n".join(lines)
    id2label = dict(enumerate(label_names))
    labels = (f"num_labels={len(label_names)}, id2label={id2label!r}, "
              f"label2id={ {v: k for k, v in id2label.items()}!r}")
    if text:
        return "\n".join([
            "from peft import AutoPeftModelForSequenceClassification", "from transformers import AutoTokenizer, pipeline",
            "", *head, f"model = AutoPeftModelForSequenceClassification.from_pretrained(model_id, {labels})",
            "tokenizer = AutoTokenizer.from_pretrained(model_id)",
            f'classifier = pipeline("{task}", model=model, tokenizer=tokenizer{trunc})', f"print(classifier({example}))"])
    return "\n".join([
        "from peft import PeftConfig, PeftModel", "from transformers import AutoImageProcessor, "
        "AutoModelForImageClassification, pipeline", "", *head, "config = PeftConfig.from_pretrained(model_id)",
        "base = AutoModelForImageClassification.from_pretrained(",
        f"    config.base_model_name_or_path, {labels}, ignore_mismatched_sizes=True)",
        "model = PeftModel.from_pretrained(base, model_id)",
        f'classifier = pipeline("{task}", model=model, image_processor=AutoImageProcessor.from_pretrained(model_id))',
        f"print(classifier({example}))"])


def model_card(recipe, metrics: dict, plan_table: str, preprocessing: str, label_names: list[str],
               adapter: dict | None, n_train: int, n_eval: int, usage: str = "") -> str:
    base = recipe.model.model_name_or_path
    lines = [
        "---",
        "library_name: " + ("peft" if adapter else "transformers"),
        f"base_model: {base}" if not base.startswith("zoo:") else f"# base_model: {base} (hftl offline zoo alias)",
        "tags: [hftl, transfer-learning, " + recipe.task + "]",
        "---",
        "",
        f"# {recipe.output_dir.name}",
        "",
        f"Fine-tuned from `{base}` for **{recipe.task}** with hftl "
        f"({'PEFT ' + adapter['method'] if adapter else 'strategy: ' + (recipe.strategy.preset or 'custom')}).",
        "",
        "## Data",
        "",
        f"- source: `{recipe.data.dataset_name or recipe.data.train_dir or recipe.data.train_file}`"
        + (f" (config `{recipe.data.dataset_config_name}`)" if recipe.data.dataset_config_name else ""),
        f"- train examples: {n_train}, evaluation examples: {n_eval}",
        f"- labels ({len(label_names)}): {', '.join(label_names)}",
        f"- preprocessing: {preprocessing}",
        "",
        "## Results",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    for k, v in sorted(metrics.items()):
        if isinstance(v, (int, float)):
            lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    if adapter:
        lines += ["", "## Adapter", "", "| setting | value |", "|---|---|"]
        for k, v in adapter.items():
            lines.append(f"| {k} | {', '.join(map(str, v)) if isinstance(v, list) else v} |")
    if usage:
        lines += ["", "## How to use", "", "```python", usage, "```"]
    lines += ["", "## Transfer strategy", "", plan_table, "", "## Training", "",
              "| argument | value |", "|---|---|"]
    for k, v in sorted(recipe.training.items()):
        lines.append(f"| {k} | {v} |")
    lines += ["", "Reproduce with `hftl train recipe.yaml` (the resolved recipe saved beside this card).", ""]
    return "\n".join(lines)
