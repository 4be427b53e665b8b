"""Tiny vision-language checkpoints (LLaVA, Idefics3 / SmolVLM, Qwen2-VL) saved with processors built here (a
byte-level BPE tokenizer trained on a toy corpus, the family's image processor and a ChatML chat template), and
image-chat rows over coloured squares."""

from __future__ import annotations

import random
from pathlib import Path

from lm_assets import byte_bpe, write_jsonl

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def chat_template(image: str) -> str:
    """ChatML whose image parts render as `image` (the family's placeholder)."""
    return ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
            "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
            "{% if p['type'] == 'image' %}{{ '" + image + "' }}{% else %}{{ p['text'] }}{% endif %}"
            "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _tokenizer(tokens: list[str]):
    tok = byte_bpe(chat=False)
    tok.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    tok.pad_token = tok.eos_token = "<|im_end|>"
    return tok


def _llama(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)


def save_llava(d: Path, seed: int = 0) -> Path:
    """LLaVA: a 2-layer CLIP vision tower (32 px, 8 px patches: 16 image tokens), its projector, a 2-layer Llama."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    tok = _tokenizer(["<image>"])
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    config = LlavaConfig(vision_config=vision, text_config=_llama(tok), image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=16)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(d)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=chat_template("<image>")).save_pretrained(d)
    return d


def save_idefics3(d: Path, seed: int = 0) -> Path:
    """Idefics3 (SmolVLM's architecture): a 2-layer SigLIP-style vision tower (32 px, 8 px patches), its pixel-shuffle
    connector (scale 2: 4 image tokens per image, between <fake_token_around_image> and <global-img>), a Llama."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tok = _tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    config = Idefics3Config(vision_config=vision, text_config=_llama(tok).to_dict(), scale_factor=2,
                            image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    Idefics3ForConditionalGeneration(config).save_pretrained(d)
    images = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                    max_image_size={"longest_edge": 32})
    Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4,
                      chat_template=chat_template("<image>")).save_pretrained(d)
    return d


def save_qwen2_vl(d: Path, seed: int = 0) -> Path:
    """Qwen2-VL: a 2-block vision tower (8 px patches, 2x2 merged by its merger: 4 image tokens per 32 px image),
    a 2-layer Qwen2 language model with multimodal rotary positions."""
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    tok = _tokenizer(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2, in_chans=3)
    config = Qwen2VLConfig(vision_config=vision, text_config=text, bos_token_id=None, image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                           video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                           vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"))
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(config).save_pretrained(d)
    images = Qwen2VLImageProcessor(min_pixels=32 * 32, max_pixels=32 * 32, patch_size=8, merge_size=2,
                                   temporal_patch_size=2)
    video = Qwen2VLVideoProcessor(min_pixels=32 * 32, max_pixels=32 * 32, patch_size=8, merge_size=2,
                                  temporal_patch_size=2)
    Qwen2VLProcessor(image_processor=images, tokenizer=tok, video_processor=video,
                     chat_template=chat_template("<|vision_start|><|image_pad|><|vision_end|>")).save_pretrained(d)
    return d


BUILDERS = {"llava": save_llava, "idefics3": save_idefics3, "qwen2_vl": save_qwen2_vl}


def square(path: Path, colour: str, size: int = 32, seed: int = 0) -> Path:
    """A coloured square with a little noise, as PNG."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[colour])[None, None] + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype("uint8")).save(path)
    return path


def colour_rows(folder: Path, n: int, seed: int, noisy_prompt: bool = True) -> list[dict]:
    """"what colour is it ?" about one square per row, its colour as the answer; with `noisy_prompt` every prompt
    ends with random words (which no loss may ask the model to predict). Image paths relative to `folder`."""
    rng = random.Random(seed)
    words = "the cat sat on a mat dog ran to park one two three sky grass".split()
    rows = []
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        square(folder / "images" / f"{seed}_{i}.png", colour, seed=seed * 1000 + i)
        noise = " " + " ".join(rng.choice(words) for _ in range(6)) if noisy_prompt else ""
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is it ?" + noise}]},
            {"role": "assistant", "content": [{"type": "text", "text": colour}]}],
            "images": [f"images/{seed}_{i}.png"]})
    return rows


def write_colour_data(folder: Path, n_train: int = 24, n_val: int = 9) -> dict[str, Path]:
    return {"train": write_jsonl(folder / "train.jsonl", colour_rows(folder, n_train, 0)),
            "validation": write_jsonl(folder / "val.jsonl", colour_rows(folder, n_val, 1))}
