"""Sentence pooling that suits the checkpoint (`model.pooling`), and runs that keep it wherever they go.

A BERT-style classifier sits on the pooler (dense + tanh over [CLS]). Checkpoints trained for
sentence embeddings (sentence-transformers, e.g. all-MiniLM-L6-v2) never trained that pooler: their
embedding is the attention-masked mean of the token states, declared in `1_Pooling/config.json`.
With a frozen backbone, a head on the untrained pooler learns next to nothing; on the mean it learns
what logistic regression on the embeddings learns. `auto` reads that file; `mean`/`cls` force it.

The pooler module is swapped for a parameter-free one (`hftl/model/remote/hftl_pooling.py`). A saved run
carries it for plain transformers: `make_portable` copies that file into the folder and gives config.json
model_type `hftl_pooled_<base>` with an `auto_map`, so `pipeline(..., trust_remote_code=True)` and the Auto
classes rebuild the same model, and a load without trust_remote_code is refused instead of silently
putting an untrained pooler back. `hftl.load_model` builds it from hftl's own copy of the code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import nn

from hftl.errors import HftlError
from hftl.files import write_json, write_text
from hftl.model.remote import hftl_pooling
from hftl.model.remote.hftl_pooling import MODEL_TYPE_PREFIX, pooled_classes

MODES = ("auto", "default", "mean", "cls")
REMOTE_FILE = "hftl_pooling.py"


def checkpoint_pooling(path: str) -> str:
    """'mean' / 'cls' from a sentence-transformers `1_Pooling/config.json`, else 'default'."""
    cfg = Path(path) / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return "default"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return "default"
    if data.get("pooling_mode_mean_tokens"):
        return "mean"
    if data.get("pooling_mode_cls_token"):
        return "cls"
    return "default"


def apply_pooling(model: nn.Module, mode: str, checkpoint_path: str | None = None) -> str:
    """Swap the backbone's pooler for `mode` ('auto' resolves from the checkpoint). Returns the mode used."""
    if mode == "auto":
        mode = checkpoint_pooling(checkpoint_path) if checkpoint_path else "default"
    if mode == "default":
        return mode
    try:
        hftl_pooling.use_token_pooling(model, mode)
    except ValueError:
        raise HftlError(
            f"Recipe key 'model.pooling': {mode!r} needs a backbone with a pooler (BERT-style); "
            f"{type(model).__name__} has none. Use model.pooling: default.") from None
    return mode


def pooling_of(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "hftl_pooling", None) or "default"


def make_portable(folder: Path, model: nn.Module) -> bool:
    """Make a saved full model in `folder` load with its pooling in plain transformers (see the module doc).
    Returns whether loading it needs trust_remote_code=True."""
    if pooling_of(model) == "default":
        return False
    base = model.config.model_type.removeprefix(MODEL_TYPE_PREFIX)
    source = Path(hftl_pooling.__file__).read_text(encoding="utf-8")
    source, n = re.subn(r'^BASE_MODEL_TYPE = "[^"]*"', f'BASE_MODEL_TYPE = "{base}"', source, count=1, flags=re.M)
    assert n == 1, "hftl/model/remote/hftl_pooling.py lost its BASE_MODEL_TYPE line"
    write_text(folder / REMOTE_FILE, source)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    module = REMOTE_FILE.removesuffix(".py")
    config.update(model_type=MODEL_TYPE_PREFIX + base, architectures=["HftlPooledForSequenceClassification"],
                  auto_map={"AutoConfig": f"{module}.HftlPooledConfig",
                            "AutoModelForSequenceClassification": f"{module}.HftlPooledForSequenceClassification"})
    write_json(config_path, config)
    return True


def needs_remote_code(folder: Path) -> bool:
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return str(config.get("model_type", "")).startswith(MODEL_TYPE_PREFIX)


def load_portable(folder: Path):
    """A run saved by make_portable, loaded with hftl's own copy of the code (no trust_remote_code)."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    config_cls, model_cls = pooled_classes(config["model_type"].removeprefix(MODEL_TYPE_PREFIX))
    return model_cls.from_pretrained(str(folder), config=config_cls.from_pretrained(str(folder)))
