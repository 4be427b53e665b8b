"""ONNX export of a finished run (torch.onnx, the torch.export-based exporter) and dynamic INT8 quantization with
ONNX Runtime, checked against PyTorch on the run's validation set (the model that loads such a folder:
onnx_model.py).

The graph takes the task collator's tensors by name (input_ids / attention_mask / pixel_values / input_values
...) and returns `logits`; the batch axis is dynamic, and so is the second axis of 2-D inputs (tokens, audio
samples). INT8 is ONNX Runtime's dynamic quantization of the linear layers (MatMul / Gemm weights to int8,
activations quantized per batch at run time); torch.ao.quantization is deprecated.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from hftl.data import batches
from hftl.errors import HftlError
from hftl.files import write_json
from hftl.hooks import find_head
from hftl.model.remote.hftl_pooling import MODEL_TYPE_PREFIX
from hftl.runs.compare import compare, eval_set, state_bytes
from hftl.runs.onnx_model import ONNX_FILE, first_line, run_logits, session

EXTERNAL_DATA_BYTES = 1 << 30  # above this the weights go beside the graph (model.onnx.data): protobuf's 2 GiB cap
LINEAR_OPS = ["MatMul", "Gemm"]
INT8_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat")


def export_onnx(model, batch: dict, path: Path) -> list[str]:
    """Export `model` (eval, float32, CPU) to `path` with `batch` (the collator's tensors, labels removed) as
    the example inputs. Returns the graph's input names."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **inputs):
            return self.inner(**inputs).logits

    dynamic = {name: {0: "batch", **({1: "sequence"} if t.dim() == 2 else {})} for name, t in batch.items()}
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            torch.onnx.export(Logits(model).eval(), (), str(path), kwargs=dict(batch), input_names=list(batch),
                              output_names=["logits"], dynamic_shapes=dynamic, dynamo=True, verbose=False,
                              external_data=size > EXTERNAL_DATA_BYTES)
    except ModuleNotFoundError as e:
        raise HftlError(f"ONNX export needs the packages onnx and onnxscript ({e}): pip install onnx onnxscript "
                        "onnxruntime.") from None
    except Exception as e:  # torch.export / the ONNX translation raise many types
        raise HftlError(f"torch.onnx.export could not export {type(model).__name__} ({first_line(e)}). The run "
                        "itself is unaffected: its PyTorch model, or a pruned copy (--prune), still serve.") from None
    return list(batch)


def quantize_int8(float_path: Path, int8_path: Path, model_name: str) -> int:
    """ONNX Runtime's dynamic INT8 quantization of the linear layers; returns how many it quantized."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "Please consider to run pre-processing before quantization"
    try:
        quantize_dynamic(str(float_path), str(int8_path), op_types_to_quantize=LINEAR_OPS, weight_type=QuantType.QInt8,
                         use_external_data_format=float_path.with_name(float_path.name + ".data").exists())
    except Exception as e:
        raise HftlError(f"ONNX Runtime could not quantize {model_name} ({first_line(e)}).") from None
    finally:
        root.setLevel(level)
    graph = onnx.load(str(int8_path), load_external_data=False).graph
    return sum(n.op_type in INT8_OPS for n in graph.node)


def nothing_to_quantize(model, head: list[str]) -> str | None:
    """Why dynamic INT8 would do nothing useful for `model`, or None. It quantizes linear layers only: on CPU,
    ONNX Runtime's dynamic ConvInteger is several times slower than float Conv (conv nets want static
    quantization with calibration data), and a head alone is not worth it."""
    import torch
    from transformers.pytorch_utils import Conv1D

    def in_head(name):
        return any(name == h or name.startswith(h + ".") for h in head)

    linear = conv = 0
    for name, module in model.named_modules():
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, (torch.nn.Linear, Conv1D)) and not in_head(name):
            linear += n
        elif isinstance(module, torch.nn.modules.conv._ConvNd):
            conv += n
    if linear:
        return None
    name = type(model).__name__
    where = f"its {conv:,} weights are in convolutions" if conv else "it has no linear layers"
    head_note = f" ({', '.join(head)}, too small to gain anything)" if head else ""
    return (f"Nothing to quantize: dynamic INT8 (ONNX Runtime's quantize_dynamic) quantizes linear layers, and "
            f"{name} has no linear layer outside its head{head_note}; {where}. ONNX Runtime's dynamic ConvInteger "
            "runs several times slower than float convolutions on CPU, so hftl does not quantize those: export "
            "it with --onnx (float), prune it (--prune), or quantize it statically with calibration data outside hftl.")


def latency_ms(fn, batch, budget_s: float = 0.6, max_runs: int = 30) -> float:
    """Median wall time (ms) of fn(batch), after one warm-up, repeated until `budget_s` or `max_runs`."""
    fn(batch)
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < max_runs and time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn(batch)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def onnx_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def export_onnx_folder(run, model, stage: Path, int8: bool) -> dict:
    """model.onnx (float, or INT8) in `stage`, checked on the run's validation set: the numbers for the report."""
    import onnxruntime
    import torch

    name = type(model).__name__
    if int8:
        reason = nothing_to_quantize(model, find_head(model))
        if reason:
            raise HftlError(reason)
    eval_ds, collator, processor = eval_set(run, model)
    example = next(batches(eval_ds, collator, 8)).inputs
    if next(iter(example.values())).shape[0] < 2:  # torch.export fixes an axis it sees at size 1
        example = {k: torch.cat([v, v]) for k, v in example.items()}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(dir=stage) as tmp:
        float_path = (Path(tmp) if int8 else stage) / ONNX_FILE
        export_onnx(model, example, float_path)
        sessions = {"onnx": session(float_path, threads)}
        if int8:
            quantized = quantize_int8(float_path, stage / ONNX_FILE, name)
            if not quantized:
                raise HftlError(f"Nothing to quantize: ONNX Runtime found no linear layer (MatMul/Gemm with a weight) "
                                f"in the ONNX graph of {name}; export it with --onnx instead.")
            sessions["int8"] = session(stage / ONNX_FILE, threads)
        models = {"pytorch": lambda b: model(**b).logits,
                  **{k: (lambda b, s=s: run_logits(s, b)) for k, s in sessions.items()}}
        scores = compare(run, eval_ds, collator, models)
        diff, peak = scores["onnx"]["max_abs_diff"], scores.pop("_peak_logit")
        tolerance = 1e-3 * max(1.0, peak)
        print(f"ONNX Runtime vs PyTorch on {scores['_examples']} validation examples: max abs logit difference "
              f"{diff:.3g} (tolerance {tolerance:.3g})")
        if diff > tolerance:
            raise HftlError(f"The ONNX export of {name} is wrong: ONNX Runtime's logits differ from PyTorch's by up to "
                            f"{diff:.3g} on the validation set (tolerance {tolerance:.3g}, largest logit {peak:.3g}). "
                            "Nothing was written; export it merged or pruned instead, or report the model.")
        n = len(eval_ds)
        one = dict(collator([eval_ds[0]]))
        many = dict(collator([eval_ds[i % n] for i in range(32)]))
        for b in (one, many):
            b.pop("labels", None)
        latency = {}
        with torch.no_grad():
            for key, fn in models.items():
                latency[key] = {"1": latency_ms(fn, one), "32": latency_ms(fn, many)}
        sizes = {"pytorch": state_bytes(model), "onnx": onnx_bytes(float_path)}
        if int8:
            sizes["int8"] = onnx_bytes(stage / ONNX_FILE)
    _write_config(model, stage)
    processor.save_pretrained(str(stage))
    numbers = {"max_abs_diff": diff, "tolerance": tolerance, "examples": scores.pop("_examples"), "scores": scores,
               "size_bytes": sizes, "latency_ms": latency, "threads": threads, "inputs": list(example),
               "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}}
    if int8:
        numbers["quantized_layers"] = quantized
    return numbers


def _write_config(model, stage: Path) -> None:
    """config.json beside the graph (id2label / label2id for `.config`), describing the model the graph was
    exported from. A mean/cls-pooled run's config names hftl's remote code (auto_map): the pooling is in the
    graph, so the ONNX folder's config is the base model type's, with `hftl_pooling` saying which pooling."""
    config = model.config.to_dict()
    config.pop("auto_map", None)
    config["model_type"] = str(config.get("model_type", "")).removeprefix(MODEL_TYPE_PREFIX)
    write_json(stage / "config.json", config)


