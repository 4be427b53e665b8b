"""Helpers shared by the benchmark scripts: the machine description, markdown tables, result files.

Nothing here trains anything. The scripts import it as `from common import ...` (they run as
`python benchmarks/<name>.py`, so this folder is on sys.path).
"""

from __future__ import annotations

import copy
import json
import datetime
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

# The zoo and the tokenizers must never try the network, and tokenizers' own threads would fight
# torch's for the cores.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HFTL_LOG_LEVEL", "WARNING")
sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> str:
    """One markdown paragraph: where and with what the numbers were measured."""
    import peft
    import timm
    import torch
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"Machine: {cpu_model()}, {cores} cores available, torch threads {torch.get_num_threads()}, GPU: {gpu}. "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"timm {timm.__version__}, peft {peft.__version__}. hftl at {git_revision()}. "
        f"Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}."
    )


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    align = ["---" if i == 0 else "---:" if all(isinstance(r[i], (int, float)) for r in rows) else "---"
             for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_result(name: str, title: str, body: str, save: bool = True) -> Path | None:
    """Print the result and (save=True) write it to benchmarks/results/<name>.md with the machine it ran on.
    Smoke runs (fewer epochs/steps than the benchmark's own) pass save=False: printed, never stored."""
    if not save:
        print(body)
        return None
    text = f"# {title}\n\n{machine_info()}\n\n{body.strip()}\n"
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print(f"written to {path.relative_to(ROOT)}")
    return path


def summarize(result) -> dict:
    """Accuracy, macro-F1, train time and trainable-parameter count of an `hftl.train` result."""
    m = result.metrics
    trainable = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    return {"accuracy": m["eval_accuracy"], "f1": m["eval_f1_macro"], "train_s": m.get("train_runtime") or float("nan"),
            "trainable": trainable}


def load_rows(name: str, keep: bool) -> dict:
    """The per-row numbers of earlier invocations (results/<name>.json), so rows can be run a few at a time."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if keep and path.is_file() else {}


def save_rows(name: str, rows: dict, keep: bool) -> None:
    """Store the rows after each one finishes: an interrupted run loses at most the row in progress."""
    if keep:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")


def selected(key: str, only: list[str] | None) -> bool:
    """Does `--only` (comma-separated parts of row keys) ask for this row? Everything without it."""
    return not only or any(o in key for o in only)


def run_row(name: str, rows: dict, key: str, title: str, measure, keep: bool, merge_stored: bool = False) -> None:
    """Measure one row, print it and store it at once in results/<name>.json. `merge_stored`: first read back
    the rows another invocation (run side by side) stored meanwhile, so neither overwrites the other's rows."""
    print(f"\n=== {key}: {title}", flush=True)
    row = measure()
    if merge_stored:
        rows.update({k: v for k, v in load_rows(name, keep).items() if k != key})
    rows[key] = row
    print(json.dumps(rows[key]), flush=True)
    save_rows(name, rows, keep)


def merge(base: dict, changes: dict) -> dict:
    """A recipe dict with `changes` applied, nested dicts merged (inputs left untouched)."""
    out = copy.deepcopy(base)
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20
