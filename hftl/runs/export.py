"""Merge a PEFT adapter into its base model and save the full model (safetensors)."""

from __future__ import annotations

import copy
from pathlib import Path

from hftl.errors import HftlError


def merge_adapter(peft_model, processor, target: Path) -> Path:
    """Save base + adapter merged into plain weights. Works on a copy: the trained model stays a PeftModel."""
    config = next(iter(peft_model.peft_config.values()))
    method = str(getattr(config.peft_type, "value", config.peft_type)).lower()
    if config.is_prompt_learning:
        raise HftlError(f"A {method} adapter learns virtual tokens, not weight updates: there is nothing to merge. "
                        "Load it with hftl.load_model (PeftModel) instead.")
    try:
        merged = copy.deepcopy(peft_model).merge_and_unload()
    except (ValueError, NotImplementedError) as e:
        raise HftlError(f"PEFT cannot merge this {method} adapter: {e}".replace("\n", " ")) from None
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(target))
    from hftl.pooling import make_portable

    make_portable(target, merged)
    if processor is not None:
        processor.save_pretrained(str(target))
    from hftl.runs.outputs import fix_modes

    fix_modes(target)
    return target


def export_merged(output_dir: str | Path, to: str | Path | None = None) -> Path:
    from hftl.runs.load import load_model

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
