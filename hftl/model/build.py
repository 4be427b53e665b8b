"""Build the pretrained model (transformers or timm via TimmWrapper) with a head for the data's labels."""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path

from hftl import zoo
from hftl.errors import HftlError
from hftl.model.pooling import apply_pooling, needs_remote_code
from hftl.zoo import assembled

logger = logging.getLogger(__name__)


def resolve_path(model_section) -> str:
    """The checkpoint folder (or Hub id) to load: a zoo alias resolved; a vision + text pair assembled once."""
    if model_section.model_name_or_path is None:
        return assembled.dual_encoder(zoo.resolve_model(model_section.vision_model_name_or_path),
                                      zoo.resolve_model(model_section.text_model_name_or_path),
                                      model_section.projection_dim)
    return zoo.resolve_model(model_section.model_name_or_path)


def is_local_path(name: str) -> bool:
    """A folder or file on this disk (or written like one), as opposed to a Hub id `user/name`."""
    p = Path(name).expanduser()
    return p.is_absolute() or name.startswith((".", "~")) or p.exists() or name.count("/") > 1


def _load_error(path: str, e: Exception) -> HftlError:
    msg = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
    p = Path(path).expanduser()
    if p.is_file():
        msg = "it is a file, not a checkpoint folder"
    elif p.is_dir() and not (p / "config.json").is_file():
        msg = f"the folder has no config.json, so it is not a saved checkpoint ({msg})"
    elif not p.exists() and is_local_path(path):
        msg = "no such folder (and not a Hub id of the form user/name)"
    return HftlError(
        f"Recipe key 'model.model_name_or_path': cannot load '{path}': {msg}. Give a local checkpoint folder, a zoo "
        "alias (zoo:minilm-l6), or a Hub id on a machine that can reach the Hub (HF_HUB_OFFLINE is "
        "set on air-gapped machines)."
    )


_COMMON_TYPES = ("t5", "bart", "mt5", "pegasus", "marian", "gpt2", "llama", "qwen2", "mistral", "bert", "roberta",
                 "deberta-v2", "vit", "convnext", "timm_wrapper", "wav2vec2", "whisper")


def _check_architecture(task, auto, config, path: str) -> None:
    """A checkpoint the task's Auto class has no class for (a decoder-only model for seq2seq), said before loading."""
    names = getattr(getattr(auto, "_model_mapping", None), "_model_mapping", None)  # model_type -> class name
    model_type = getattr(config, "model_type", None)
    if not names or not model_type or model_type in names or getattr(config, "auto_map", None):
        return
    common = [t for t in _COMMON_TYPES if t in names]
    known = ", ".join([*common, *sorted(set(names) - set(common))][:8])
    raise HftlError(f"Recipe key 'model.model_name_or_path': '{path}' is a {model_type} model, and task {task.name} "
                    f"cannot use it: {auto.__name__} has no {model_type} class. It takes e.g. {known}, ... "
                    f"({len(names)} model types); choose a checkpoint of one of them, or another task.")


def load_processor(task, model_section, data, run_dir: str | None = None):
    """The checkpoint's own processor, as the task loads it; `run_dir`: the one a finished run saved."""
    path = run_dir or resolve_path(model_section)
    # AutoTokenizer reads config.json first: a pooled run's hftl_pooled_<base> is unknown without remote code, and
    # the fallback warns about "a model of type ``". The tokenizer itself is the base's, saved beside it.
    pooled_run = run_dir is not None and needs_remote_code(Path(run_dir))
    try:
        with transformers_errors_only() if pooled_run else nullcontext():
            return task.load_processor(model_section, path, data)
    except (OSError, ValueError) as e:
        if run_dir is not None:
            raise HftlError(f"'{run_dir}' has no loadable processor files ({str(e).splitlines()[0] if str(e) else e}): "
                            "the run dir is incomplete.") from None
        raise _load_error(path, e) from None


@contextmanager
def transformers_errors_only():
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def model_device(model):
    """Where a model's parameters are (an ONNX Runtime model has none: the CPU)."""
    import torch

    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def build_model(task, model_section, label_names: list[str], data):
    """The task's Auto class with its config keys (num_labels / id2label / label2id); a mismatched head is replaced."""
    from transformers import AutoConfig

    path = resolve_path(model_section)
    common = dict(revision=model_section.model_revision, trust_remote_code=model_section.trust_remote_code,
                  cache_dir=model_section.cache_dir)
    try:
        config = AutoConfig.from_pretrained(model_section.config_name or path, **task.config_kwargs(label_names), **common)
        if getattr(config, "pad_token_id", 0) is None and getattr(config, "eos_token_id", None) is not None:
            config.pad_token_id = config.eos_token_id  # GPT-style models classify the last non-pad token
        _check_architecture(task, task.model_class(data), config, path)
        model, info = task.model_class(data).from_pretrained(
            path, config=config, ignore_mismatched_sizes=model_section.ignore_mismatched_sizes,
            output_loading_info=True, **common)
    except (OSError, ValueError, KeyError) as e:
        raise _load_error(path, e) from None
    if isinstance(getattr(model.config, "label_names", None), list):
        # TimmWrapperConfig keeps the checkpoint's `label_names` when loaded with a new id2label, and writes those
        # stale names back into config.json (so pipeline() would name the classes after the old head).
        model.config.label_names = list(label_names)
    pooling = apply_pooling(model, getattr(model_section, "pooling", "default"), path)
    if pooling != "default":
        logger.info("sentence pooling: %s", pooling)
    new = sorted(set(info.get("missing_keys", [])) | {k for k, *_ in info.get("mismatched_keys", [])})
    if new:
        logger.info("newly initialised (not in the checkpoint): %s", ", ".join(new[:10]) + (" ..." if len(new) > 10 else ""))
    return model
