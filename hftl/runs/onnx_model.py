"""An exported folder's model.onnx behind the PyTorch model's calling convention (what `load_model` returns for
an ONNX export), and the ONNX Runtime session it runs on."""

from __future__ import annotations

import re
from pathlib import Path

from hftl.errors import HftlError

ONNX_FILE = "model.onnx"


def first_line(e: BaseException) -> str:
    """The error's own words on one line (torch.onnx wraps the real error under "## Exception summary")."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1:]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle ONNX Runtime threads spin for a while after each run: PyTorch timed in the same process would
        # share its cores with them (ten times slower on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(sess, batch: dict) -> dict:
    import numpy as np

    types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
             "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(bool)": np.bool_}
    feeds = {}
    for i in sess.get_inputs():
        if i.name not in batch:
            raise HftlError(f"The ONNX model takes '{i.name}', which the batch lacks (it has: {', '.join(batch)}).")
        value = batch[i.name]
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        feeds[i.name] = value.astype(types.get(i.type, value.dtype), copy=False)
    return feeds


def run_logits(sess, batch: dict):
    """The session's logits for a collated batch (torch tensors; keys the graph does not take are ignored)."""
    import torch

    return torch.from_numpy(sess.run(["logits"], _feeds(sess, batch))[0])


class OnnxOutput:
    def __init__(self, logits):
        self.logits = logits

    def __getitem__(self, key):
        return self.logits if key in (0, "logits") else {}[key]


class OnnxModel:
    """An exported folder's model.onnx behind the PyTorch model's calling convention: `model(**batch).logits`
    with the collator's torch tensors in and a torch tensor out (keys the graph does not take, such as labels,
    are ignored). Runs on CPU with ONNX Runtime; `.config` is the run's config (id2label / label2id)."""

    device = "cpu"

    def __init__(self, folder: str | Path, label_names: list[str] | None = None, threads: int | None = None):
        self.path = Path(folder)
        try:
            self.session = session(self.path / ONNX_FILE, threads)
        except ModuleNotFoundError:
            raise HftlError(f"'{self.path}' holds an ONNX model: loading it needs onnxruntime (pip install "
                            "onnxruntime).") from None
        except Exception as e:
            raise HftlError(f"'{self.path / ONNX_FILE}' is not a loadable ONNX model ({first_line(e)}): the file is "
                            "truncated or corrupt; export the run again.") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = self._config(label_names or [])

    def _config(self, label_names):
        from transformers import PretrainedConfig

        try:  # the plain config class: no model type lookup, no remote code
            return PretrainedConfig.from_json_file(str(self.path / "config.json"))
        except (OSError, ValueError):
            return PretrainedConfig(id2label=dict(enumerate(label_names)),
                                    label2id={n: i for i, n in enumerate(label_names)})

    def __call__(self, **batch) -> OnnxOutput:
        return OnnxOutput(run_logits(self.session, batch))

    def eval(self):
        return self

    def to(self, *args, **kwargs):
        return self

    def __repr__(self) -> str:
        return f"OnnxModel('{self.path / ONNX_FILE}', inputs={self.input_names})"
