"""Merge a PEFT adapter into its base model and save the full model (safetensors)."""

from __future__ import annotations

import copy
from pathlib import Path

from hftl.errors import HftlError


def merge_adapter(peft_model, processor, target: Path) -> Path:
    """Save base + adapter merged into plain weights. Works on a copy: the trained model stays a PeftModel."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(target))
    if processor is not None:
        processor.save_pretrained(str(target))
    return target


def export_merged(output_dir: str | Path, to: str | Path | None = None) -> Path:
    from hftl.pipeline import load_model

    out = Path(output_dir)
    if not (out / "adapter_config.json").is_file():
        raise HftlError(f"'{out}' holds no adapter (adapter_config.json): only PEFT runs can be merged.")
    model = load_model(out)
    processor = None
    try:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(out))
    except (OSError, ValueError):
        pass
    return merge_adapter(model, processor, Path(to) if to else out / "merged")
