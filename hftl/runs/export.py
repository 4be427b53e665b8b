"""Export a finished run: merged (a PEFT adapter folded into plain weights), ONNX, ONNX INT8, pruned, or GGUF.

`export(run_dir, onnx=True)` and friends write one folder that reads back like a run (`read_run`: recipe.yaml,
labels.json, the processor) and loads with `hftl.runs.load.load_model` (ONNX folders as an ONNX Runtime model).
ONNX, INT8 and pruned exports are checked on the run's own validation set, rebuilt from its saved recipe:
the numbers (ONNX-vs-PyTorch logit difference, sizes, CPU latency, metrics) go to export.md and export.json
beside the files, and are printed. PEFT runs are merged in memory first. The folder is written under a
temporary name and renamed when complete: a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from pathlib import Path

from hftl.errors import HftlError
from hftl.files import fix_modes, umask, write_json, write_text
from hftl.hooks import find_head
from hftl.model import make_portable
from hftl.runs.compare import compare, eval_set, state_bytes
from hftl.runs.gguf import QUANTS as GGUF_QUANTS
from hftl.runs.gguf import export_gguf_folder
from hftl.runs.gguf import markdown as gguf_markdown
from hftl.runs.load import RUN_FILES, check_weights, load_base, load_model, load_processor, read_run
from hftl.runs.onnx import export_onnx_folder

KINDS = ("merge", "onnx", "int8", "prune", "gguf")


# ----------------------------------------------------------------------------------------------- merge

def merged_copy(peft_model, why: str = "merge"):
    """The base model with the adapter folded in (PEFT's merge_and_unload on a copy: the PeftModel stays)."""
    config = next(iter(peft_model.peft_config.values()))
    method = str(getattr(config.peft_type, "value", config.peft_type)).lower()
    if config.is_prompt_learning:
        raise HftlError(f"A {method} adapter learns virtual tokens, not weight updates: there is nothing to merge"
                        f"{'' if why == 'merge' else f', so it cannot be exported {why} (that needs a plain model)'}. "
                        "Load it with hftl.load_model (PeftModel) instead.")
    try:
        return copy.deepcopy(peft_model).merge_and_unload()
    except (ValueError, NotImplementedError) as e:
        raise HftlError(f"PEFT cannot merge this {method} adapter: {e}".replace("\n", " ")) from None


def merge_adapter(peft_model, processor, target: Path) -> Path:
    """Save base + adapter merged into plain weights. Works on a copy: the trained model stays a PeftModel."""
    merged = merged_copy(peft_model)
    target.mkdir(parents=True, exist_ok=True)
    _save_pretrained(merged, processor, target)
    return target


def _save_pretrained(model, processor, target: Path) -> None:
    model.save_pretrained(str(target))  # safetensors
    make_portable(target, model)
    if processor is not None:
        processor.save_pretrained(str(target))
    fix_modes(target)


def export_merged(output_dir: str | Path, to: str | Path | None = None) -> Path:
    return export(output_dir, merge=True, to=to)


# ----------------------------------------------------------------------------------------------- entry point

def export(run_dir: str | Path, *, merge: bool = False, onnx: bool = False, int8: bool = False,
           prune: float | None = None, wise_ft: float | None = None, gguf: bool = False, quant: str = "f16",
           to: str | Path | None = None) -> Path:
    """Export the run in `run_dir` one way (exactly one of merge / onnx / int8 / prune / wise_ft) into `to` (default
    `<run_dir>/merged` for merge, `<run_dir>/exported-<kind>` otherwise) and return that folder.

    merge: the PEFT adapter folded into the base (safetensors). onnx: model.onnx (dynamic batch and sequence),
    its logits checked against PyTorch's on the validation set. int8: the ONNX export with its linear layers
    dynamically quantized to INT8 by ONNX Runtime, with size, CPU latency (batch 1 and 32) and metrics against
    the float models. prune=f: the fraction f of the Linear/Conv weights with the smallest magnitude (global L1,
    the head excluded) set to zero for good, saved as a plain transformers folder, with sparsity and metrics.
    wise_ft=a: the weight-space ensemble (1 - a) x the run's base + a x its fine-tuned weights (WiSE-FT, Wortsman et
    al. 2022), a plain transformers folder, scored beside the fine-tuned model. gguf: causal-LM runs as one GGUF
    file for llama.cpp / Ollama (`quant` f16 or q8_0), its greedy tokens checked against the run's (hftl.runs.gguf).
    """
    chosen = [k for k, on in (("merge", merge), ("onnx", onnx), ("int8", int8), ("prune", prune is not None),
                              ("wise-ft", wise_ft is not None), ("gguf", gguf)) if on]
    if len(chosen) != 1:
        raise HftlError(f"Export one way at a time: give exactly one of merge, onnx, int8, prune, wise-ft or gguf (got "
                        f"{', '.join(chosen) or 'none'}).")
    kind = chosen[0]
    if kind == "wise-ft" and (isinstance(wise_ft, bool) or not isinstance(wise_ft, (int, float)) or not 0 <= wise_ft <= 1):
        raise HftlError(f"The WiSE-FT alpha must be a number from 0 (the base model) to 1 (the fine-tuned one), not "
                        f"{wise_ft!r}.")
    if kind == "prune" and (isinstance(prune, bool) or not isinstance(prune, (int, float)) or not 0 < prune < 1):
        raise HftlError(f"The prune fraction must be a number strictly between 0 and 1 (the share of Linear/Conv "
                        f"weights set to zero, e.g. 0.5), not {prune!r}.")
    if kind == "gguf" and quant not in GGUF_QUANTS:
        raise HftlError(f"The GGUF quantization (quant / --quant) must be one of {', '.join(GGUF_QUANTS)}, not "
                        f"{quant!r}.")
    run = _check_run(run_dir, kind)
    if kind not in run.task.exports:
        why = (" (ONNX and pruning check class probabilities; a generating model needs a decoder loop with a KV cache "
               "in ONNX, which Optimum's ORTModelForCausalLM / ORTModelForSeq2SeqLM export does)") if run.task.generates else ""
        raise HftlError(f"'{run.path}' is a {run.task.name} run: hftl exports it with --{' or --'.join(run.task.exports)}, "
                        f"not --{kind}{why}.")
    target = Path(to) if to is not None else run.path / ("merged" if kind == "merge" else f"exported-{kind}")
    _check_target(target, run.path)
    model = _load(run)
    with _staging(target) as stage:
        if kind == "merge":
            merge_adapter(model, load_processor(run), stage)
            _copy_run_files(run, stage)
            return target
        if run.is_adapter:
            model = merged_copy(model, why=f"to {kind.upper() if kind != 'prune' else 'a pruned model'}")
        model = model.float().cpu().eval()
        if kind == "gguf":
            numbers = export_gguf_folder(run, model, load_processor(run), stage, quant)
        elif kind == "prune":
            numbers = _export_pruned(run, model, float(prune), stage)
        elif kind == "wise-ft":
            numbers = _export_wise_ft(run, model, float(wise_ft), stage)
        else:
            numbers = export_onnx_folder(run, model, stage, int8=kind == "int8")
        numbers = {"kind": kind, "run": str(run.path), "model": type(model).__name__, **numbers}
        text = gguf_markdown(numbers) if kind == "gguf" else markdown(numbers, run.task)
        write_json(stage / "export.json", numbers)
        write_text(stage / "export.md", text)
        _copy_run_files(run, stage)
    print(text)
    return target


# ----------------------------------------------------------------------------------------------- checks

def _check_run(run_dir, kind: str):
    run = read_run(run_dir)
    out = run.path
    if (out / "model.onnx").is_file():
        raise HftlError(f"'{out}' is an ONNX export already (model.onnx): export the run it came from instead.")
    check_weights(run)
    if kind == "merge" and not run.is_adapter:
        raise HftlError(f"'{out}' holds no adapter (adapter_config.json): only PEFT runs can be merged.")
    return run


def _check_target(target: Path, run_path: Path) -> None:
    t, r = target.resolve(), run_path.resolve()
    if t == r or t in r.parents:
        raise HftlError(f"The export folder '{target}' would replace the run '{run_path}' itself: choose a folder "
                        "inside or beside it (to= / --to).")
    if target.is_file():
        raise HftlError(f"The export folder '{target}' is a file: choose a folder (to= / --to).")
    if target.is_dir() and any(target.iterdir()) and not any(
            (target / name).is_file() for name in ("config.json", "model.onnx", "export.json")):
        raise HftlError(f"The export folder '{target}' exists and holds something other than an earlier export: "
                        "remove it, or choose another folder (to= / --to).")


def _load(run):
    try:
        return load_model(run.path)
    except HftlError:
        raise
    except Exception as e:  # transformers / safetensors / PEFT raise many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HftlError(f"Could not load the model saved in '{run.path}' ({type(e).__name__}: {msg}).") from None


@contextlib.contextmanager
def _staging(target: Path):
    """A temporary folder beside `target`, renamed to it on success (an earlier export there is replaced);
    removed, with any parent folders it had to create, on failure."""
    missing = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        yield stage
        os.chmod(stage, 0o777 & ~umask())  # mkdtemp makes it 0700
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / "x")
            os.replace(stage, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for p in missing:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def _copy_run_files(run, stage: Path) -> None:
    for name in RUN_FILES:
        if (run.path / name).is_file():
            shutil.copyfile(run.path / name, stage / name)
    fix_modes(stage)


# ----------------------------------------------------------------------------------------------- prune

def prunable(model) -> tuple[list[tuple[str, object]], list[str]]:
    """([(name, module)] of the Linear/Conv layers outside the head, the head's module paths). The head is
    left whole: it is new, small, and the layer pruning hurts most (every class reads all of it)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = find_head(model)
    kinds = (torch.nn.Linear, torch.nn.modules.conv._ConvNd, Conv1D)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)
              and isinstance(getattr(m, "weight", None), torch.nn.Parameter)
              and not any(n == h or n.startswith(h + ".") for h in head)]
    return layers, head


def _export_pruned(run, model, fraction: float, stage: Path) -> dict:
    from torch.nn.utils import prune

    layers, head = prunable(model)
    if not layers:
        raise HftlError(f"{type(model).__name__} has no Linear or Conv layers outside its head "
                        f"({', '.join(head) or 'none found'}): there is nothing to prune.")
    pruned = copy.deepcopy(model)
    targets = [(m, "weight") for _, m in prunable(pruned)[0]]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=fraction)
    for module, name in targets:
        prune.remove(module, name)  # weight_orig * mask -> a plain weight with the zeros in it
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    total = sum(m.weight.numel() for m, _ in targets)
    all_params = sum(p.numel() for p in pruned.parameters())
    all_zeros = sum(int((p == 0).sum()) for p in pruned.parameters())
    eval_ds, collator, processor = eval_set(run, model)
    scores = compare(run, eval_ds, collator, {"pytorch": lambda b: model(**b).logits,
                                            "pruned": lambda b: pruned(**b).logits})
    _save_pretrained(pruned, processor, stage)
    return {"fraction": fraction, "pruned_layers": len(targets), "pruned_weights": total,
            "sparsity": zeros / total, "model_sparsity": all_zeros / all_params, "head_kept": head,
            "examples": scores.pop("_examples"), "scores": {k: v for k, v in scores.items() if not k.startswith("_")},
            "size_bytes": {"pytorch": state_bytes(model),
                           "pruned": sum(p.stat().st_size for p in stage.glob("*.safetensors"))}}


# ----------------------------------------------------------------------------------------------- WiSE-FT

def interpolate(base: dict, tuned: dict, alpha: float) -> dict:
    """(1 - alpha) x base + alpha x tuned for every floating-point tensor (others, e.g. position ids, as tuned)."""
    return {k: ((1 - alpha) * base[k].to(v.dtype) + alpha * v) if v.is_floating_point() and k in base else v
            for k, v in tuned.items()}


def _export_wise_ft(run, model, alpha: float, stage: Path) -> dict:
    base = load_base(run)
    ensemble = copy.deepcopy(model)
    ensemble.load_state_dict(interpolate(base.state_dict(), model.state_dict(), alpha))
    eval_ds, collator, processor = eval_set(run, model)
    logits = run.task.logits
    scores = compare(run, eval_ds, collator, {"fine-tuned": lambda b: logits(model, b),
                                              "wise-ft": lambda b: logits(ensemble, b)})
    _save_pretrained(ensemble, processor, stage)
    return {"alpha": alpha, "examples": scores.pop("_examples"),
            "scores": {k: v for k, v in scores.items() if not k.startswith("_")},
            "size_bytes": {"fine-tuned": state_bytes(model), "wise-ft": state_bytes(ensemble)}}


# ----------------------------------------------------------------------------------------------- report

LABELS = {"pytorch": "PyTorch (float32)", "onnx": "ONNX Runtime (float32)", "int8": "ONNX Runtime INT8",
          "pruned": "PyTorch, pruned", "fine-tuned": "the run (fine-tuned)", "wise-ft": "WiSE-FT"}


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**17 else f"{n / 2**10:.1f} KB"


def markdown(numbers: dict, task) -> str:
    """export.md: what was exported and how it compares with the float PyTorch model on the validation set."""
    kind, scores = numbers["kind"], numbers["scores"]
    keys = list(task.metric_names) or sorted({k for s in scores.values() for k in s["metrics"]})
    shown = [task.metric_names.get(k, k) for k in keys]
    lat, size = numbers.get("latency_ms"), numbers.get("size_bytes", {})
    head = ["model", "size on disk", *(["CPU latency, batch 1", "batch 32"] if lat else []), *shown,
            "argmax = PyTorch", "max abs logit diff"]
    lines = [f"# Export: {kind}", "", f"`{numbers['model']}` from `{numbers['run']}`, checked on its "
             f"{numbers['examples']} validation examples (rebuilt from recipe.yaml).", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, s in scores.items():
        cells = [LABELS.get(name, name), _mb(size[name]) if name in size else "-"]
        if lat:
            cells += [f"{lat[name]['1']:.2f} ms", f"{lat[name]['32']:.2f} ms"]
        cells += [f"{s['metrics'][k]:.4f}" if k in s["metrics"] else "-" for k in keys]
        cells += [f"{100 * s['agreement']:.1f}%", f"{s['max_abs_diff']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if kind in ("onnx", "int8"):
        versions = ", ".join(f"{k} {v}" for k, v in numbers["versions"].items())
        lines += [f"ONNX Runtime vs PyTorch (float): max abs logit difference {numbers['max_abs_diff']:.3g} "
                  f"(tolerance {numbers['tolerance']:.3g}). Inputs: {', '.join(numbers['inputs'])}; batch axis dynamic"
                  f", and the sequence axis of 2-D inputs. Latency: median of repeated runs in one process, "
                  f"{numbers['threads']} CPU thread(s) for both runtimes ({versions})."]
    if kind == "int8":
        f32, i8 = scores["onnx"]["metrics"], scores["int8"]["metrics"]
        k = keys[0]
        lines += ["", f"INT8: {numbers['quantized_layers']} linear layers (MatMul/Gemm) quantized dynamically by ONNX "
                  f"Runtime (int8 weights, activations quantized per batch); "
                  f"{size['onnx'] / size['int8']:.2f}x smaller "
                  f"and {lat['onnx']['32'] / lat['int8']['32']:.2f}x the float ONNX speed at batch 32 "
                  f"({lat['onnx']['1'] / lat['int8']['1']:.2f}x at batch 1); {task.metric_names.get(k, k)} "
                  f"{f32.get(k, float('nan')):.4f} -> {i8.get(k, float('nan')):.4f}."]
    if kind == "prune":
        before, after = scores["pytorch"]["metrics"], scores["pruned"]["metrics"]
        k = keys[0]
        lines += [f"Global magnitude (L1) pruning of {100 * numbers['fraction']:g}% of the weights in "
                  f"{numbers['pruned_layers']} Linear/Conv layers ({numbers['pruned_weights']:,} weights), made "
                  f"permanent: sparsity {100 * numbers['sparsity']:.1f}% there, {100 * numbers['model_sparsity']:.1f}% "
                  f"of all parameters. The head ({', '.join(numbers['head_kept']) or 'none found'}) is left whole: it "
                  f"is new, small, and pruning it costs the most. {task.metric_names.get(k, k)} "
                  f"{before.get(k, float('nan')):.4f} -> {after.get(k, float('nan')):.4f}. The zeros are stored "
                  "densely (safetensors): the folder is as large, and as fast, as the float model until sparse "
                  "kernels or compression use them."]
    if kind == "wise-ft":
        a = numbers["alpha"]
        lines += [f"WiSE-FT (Wortsman et al. 2022): every weight is {1 - a:g} x the run's base model (rebuilt from its "
                  f"recipe) + {a:g} x the fine-tuned one; a plain transformers folder of the same architecture. The "
                  "table compares it with the fine-tuned run on the validation split (reported, not a way to choose "
                  "alpha: that belongs to data the run did not evaluate on)."]
    return "\n".join(lines) + "\n"
