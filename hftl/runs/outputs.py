"""What a run leaves in its output dir besides the Trainer's checkpoints and the files of hftl/files.py: the curves."""

from __future__ import annotations

import os
from pathlib import Path

LR_PREFIX = "learning_rate/"  # per-group learning rates HftlTrainer adds to each training log


def curves(log_history: list[dict]) -> dict:
    """Series over optimizer steps: train loss per logging step, eval loss and metrics per evaluation,
    and each group's learning rate (a group appears once its depth trains)."""
    out = {"train": [], "eval": [], "lr": {}, "epochs": []}
    for e in log_history:
        step = e.get("step")
        if step is None:
            continue
        if "loss" in e:
            out["train"].append((step, e["loss"]))
            for k, v in e.items():
                if k.startswith(LR_PREFIX):
                    out["lr"].setdefault(k[len(LR_PREFIX):], []).append((step, v))
            if not any(k.startswith(LR_PREFIX) for k in e) and "learning_rate" in e:
                out["lr"].setdefault("all", []).append((step, e["learning_rate"]))
        if "eval_loss" in e:
            if out["eval"] and out["eval"][-1][0] == step:  # the final evaluate() repeats the last epoch's
                out["eval"].pop()
            out["eval"].append((step, e))
    pairs = [(e["step"], e["epoch"]) for e in log_history if e.get("step") and e.get("epoch")]
    if pairs:  # where each epoch ends, in steps
        step, epoch = max(pairs)
        out["epochs"] = [round(k * step / epoch) for k in range(1, int(epoch + 1e-9) + 1)]
    return out


def plot_curves(log_history: list[dict], path: Path, title: str, metric_names: dict[str, str] | None = None) -> None:
    """Loss, the task's eval metrics (`metric_names`: key -> shown name) and the learning rates over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = curves(log_history)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    if c["train"]:
        ax1.plot(*zip(*c["train"]), "-", lw=1, label="train loss (each logging step)")
    if c["eval"]:
        ax1.plot([s for s, _ in c["eval"]], [e["eval_loss"] for _, e in c["eval"]], "s-", label="eval loss")
    ax1.set_ylabel("loss")
    for key, name in (metric_names or {}).items():
        points = [(s, e[f"eval_{key}"]) for s, e in c["eval"] if f"eval_{key}" in e]
        if points:
            ax2.plot(*zip(*points), "s-", label=f"eval {name}")
    ax2.set_ylabel("eval metric")
    for name, points in c["lr"].items():
        ax3.plot(*zip(*points), "-", lw=1.2, label=name)
    ax3.set_ylabel("learning rate")
    ax3.set_yscale("log" if any(v > 0 for pts in c["lr"].values() for _, v in pts) else "linear")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        for step in c["epochs"]:
            ax.axvline(step, color="grey", lw=0.6, ls=":")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7 if ax is ax3 else 9, ncol=2 if ax is ax3 and len(c["lr"]) > 6 else 1)
    ax3.set_title("per depth group (dotted: epoch ends)", fontsize=9)
    fig.suptitle(title)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Lay out, write via a temp file + rename (never a half-written png), close."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
