"""Checkpoints assembled from other checkpoints, built once into the zoo's cache: a VisionTextDualEncoderModel from
a vision and a text checkpoint with new projections (transformers' run_clip.py builds it the same way), saved with
its processor so that everything downstream loads it like any checkpoint folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hftl.zoo.sources import cached_conversion

SEED = 0  # the new projections' initialisation: the same folder for the same inputs


def _identity(path: str) -> str:
    config = Path(path) / "config.json"
    return path + (config.read_text() if config.is_file() else "")


def dual_encoder(vision: str, text: str, projection_dim: int) -> str:
    """The folder of a dual encoder of `vision` + `text` (local folders or Hub ids), its projections initialised
    from SEED. A timm vision tower gets its width as the config's hidden_size and a CLIP image processor that
    computes what timm's own data config does (the VisionTextDualEncoderProcessor saves and reloads that one)."""
    digest = hashlib.sha256(json.dumps([_identity(vision), _identity(text), projection_dim, SEED]).encode()).hexdigest()

    def build(tmp: Path):
        import torch
        import transformers as tf

        vision_config, text_config = tf.AutoConfig.from_pretrained(vision), tf.AutoConfig.from_pretrained(text)
        image_processor = tf.AutoImageProcessor.from_pretrained(vision)
        if vision_config.model_type == "timm_wrapper":
            vision_config.hidden_size = vision_config.num_features
            image_processor = _clip_processor(image_processor.data_config)
        config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(vision_config, text_config,
                                                                         projection_dim=projection_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = tf.VisionTextDualEncoderModel(
                config, vision_model=tf.AutoModel.from_pretrained(vision, config=vision_config),
                text_model=tf.AutoModel.from_pretrained(text, config=text_config))
        model.save_pretrained(tmp)
        tf.VisionTextDualEncoderProcessor(image_processor=image_processor,
                                          tokenizer=tf.AutoTokenizer.from_pretrained(text)).save_pretrained(tmp)

    return cached_conversion(f"dual-{digest[:16]}", build)


def _clip_processor(data_config: dict):
    """timm's evaluation transform (resize the short side to size / crop_pct, center crop, normalise) as a
    CLIPImageProcessor."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    _, h, w = data_config["input_size"]
    short = int(min(h, w) / data_config.get("crop_pct", 1.0))
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}.get(data_config.get("interpolation"), Image.BICUBIC)
    return CLIPImageProcessor(size={"shortest_edge": short}, crop_size={"height": h, "width": w}, resample=resample,
                              image_mean=list(data_config["mean"]), image_std=list(data_config["std"]))


# ChatML as SmolLM2-Instruct renders it (its default system turn included), with content either a string or a list
# of parts: {type: image} becomes the processor's image token, {type: text, text} its text.
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def vision_language(vision: str, text: str, image_size: int) -> str:
    """The folder of a FastVLM-architecture vision-language model (`AutoModelForImageTextToText`): the timm vision
    tower of `vision` (its last feature map, one token per 32x32 patch), a new two-layer projector (seeded) and the
    causal LM of `text`, whose tokenizer gains an `<image>` token; saved with a LlavaProcessor (images resized to
    `image_size` square, no crop) and a ChatML chat template that takes image parts."""
    digest = hashlib.sha256(json.dumps([_identity(vision), _identity(text), image_size, SEED,
                                        VLM_CHAT_TEMPLATE]).encode()).hexdigest()

    def build(tmp: Path):
        import torch
        import transformers as tf

        vision_config = tf.AutoConfig.from_pretrained(vision)
        if vision_config.model_type != "timm_wrapper":
            raise ValueError(f"{vision}: the assembled vision-language model takes a timm vision tower")
        vision_config.hidden_size, vision_config.do_pooling = vision_config.num_features, False
        tokenizer = tf.AutoTokenizer.from_pretrained(text)
        tokenizer.add_special_tokens({"extra_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
        data_config = tf.AutoImageProcessor.from_pretrained(vision).data_config
        image_processor = tf.CLIPImageProcessor(
            do_resize=True, size={"height": image_size, "width": image_size}, do_center_crop=False,
            resample=3, image_mean=list(data_config["mean"]), image_std=list(data_config["std"]))
        processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=32,
                                      vision_feature_select_strategy="full", chat_template=VLM_CHAT_TEMPLATE)
        language = tf.AutoModelForCausalLM.from_pretrained(text, dtype=torch.float32)
        config = tf.FastVlmConfig(vision_config=vision_config.to_dict(), text_config=language.config.to_dict(),
                                  image_token_index=processor.image_token_id,
                                  image_seq_length=(image_size // 32) ** 2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = tf.AutoModelForImageTextToText.from_config(config)
            model.model.vision_tower.load_state_dict(
                tf.AutoModel.from_pretrained(vision, config=vision_config).state_dict())
            model.model.language_model.load_state_dict(language.model.state_dict())
            model.lm_head.load_state_dict(language.lm_head.state_dict())
            model.resize_token_embeddings(len(tokenizer))  # the <image> row: mean + noise of the others
        model.generation_config = language.generation_config
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return cached_conversion(f"vlm-{digest[:16]}", build)
