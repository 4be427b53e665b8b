"""Tiny random models built from configs (no downloads), one per architecture family the hooks must handle."""

from __future__ import annotations

import transformers as tf


def vit(num_labels=3, image_size=32, layers=2):
    return tf.ViTForImageClassification(tf.ViTConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=37, image_size=image_size,
        patch_size=8, num_labels=num_labels))


def deit(num_labels=3):
    return tf.DeiTForImageClassification(tf.DeiTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8,
        num_labels=num_labels))


def convnext(num_labels=3):
    return tf.ConvNextForImageClassification(tf.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[2, 2], num_stages=2, image_size=32, num_labels=num_labels))


def resnet(num_labels=3):
    return tf.ResNetForImageClassification(tf.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic", num_labels=num_labels))


_TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
             max_position_embeddings=64)


def bert(num_labels=2):
    return tf.BertForSequenceClassification(tf.BertConfig(**_TEXT, num_labels=num_labels))


def roberta(num_labels=2):
    return tf.RobertaForSequenceClassification(tf.RobertaConfig(**_TEXT, num_labels=num_labels, pad_token_id=1))


def distilbert(num_labels=2):
    return tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
        vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64, num_labels=num_labels))


def gpt2(num_labels=2):
    return tf.GPT2ForSequenceClassification(tf.GPT2Config(
        vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=num_labels, pad_token_id=0))


def wav2vec2(num_labels=2):
    return tf.Wav2Vec2ForSequenceClassification(tf.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        vocab_size=10, num_labels=num_labels))


def timm_model(name, num_labels=3, **kw):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_labels, **kw)


def timm_resnet(num_labels=3):
    return timm_model("resnet18", num_labels)


def timm_vit(num_labels=3):
    return timm_model("vit_tiny_patch16_224", num_labels, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


def timm_efficientnet(num_labels=3):
    return timm_model("efficientnet_b0", num_labels)


def timm_wrapped(num_labels=3):
    """transformers' TimmWrapper around a small timm ResNet (what `timm/<name>` checkpoints load as)."""
    config = tf.TimmWrapperConfig(architecture="resnet18", num_labels=num_labels)
    return tf.TimmWrapperForImageClassification(config)


ALL = {
    "vit": vit, "deit": deit, "convnext": convnext, "resnet": resnet, "bert": bert, "roberta": roberta,
    "distilbert": distilbert, "gpt2": gpt2, "wav2vec2": wav2vec2, "timm_resnet": timm_resnet, "timm_vit": timm_vit,
    "timm_efficientnet": timm_efficientnet, "timm_wrapped": timm_wrapped,
}
