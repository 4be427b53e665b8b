"""Shared fixtures: tiny random checkpoints saved to disk and tiny, separable datasets. No network."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HFTL_LOG_LEVEL", "WARNING")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: one core per worker, no thread fights between workers
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
POS = ["good", "great", "happy", "love", "nice", "fine"]
NEG = ["bad", "awful", "sad", "hate", "poor", "ugly"]
FILLER = ["the", "a", "movie", "was", "it", "this", "day", "food", "really", "so"]


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level tokenizer, saved like a Hub checkpoint."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    d = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POS, *NEG, *FILLER]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(d)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory) -> Path:
    """A 2-layer ViT (hidden 32, 32 px) with its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    d = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                       image_size=32, patch_size=8, num_labels=2)
    ViTForImageClassification(config).save_pretrained(d)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def resnet_dir(tmp_path_factory) -> Path:
    """A tiny transformers ResNet (has BatchNorm) with a ConvNeXt-style image processor."""
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    d = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=2)
    ResNetForImageClassification(config).save_pretrained(d)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(d)
    return d


@pytest.fixture
def one_thread():
    """The models are tiny: a second intra-op thread only adds contention on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_text_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = rng.sample(FILLER, 2) + rng.sample(POS if positive else NEG, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory) -> tuple[Path, Path]:
    """Separable sentiment: the label is whether a positive or a negative word occurs."""
    import csv

    d = tmp_path_factory.mktemp("text")
    paths = []
    for name, n, seed in (("train", 96, 0), ("validation", 32, 1)):
        p = d / f"{name}.csv"
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(make_text_rows(n, seed))
        paths.append(p)
    return tuple(paths)


def write_image_folder(root: Path, n_per_class: int, seed: int, size: int = 32) -> Path:
    """Two classes that differ in colour: red-ish vs blue-ish noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, channel in (("red", 0), ("blue", 2)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
            img[..., channel] = rng.integers(160, 255, size=(size, size), dtype=np.uint8)
            Image.fromarray(img).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("images")
    return write_image_folder(d / "train", 16, 0), write_image_folder(d / "validation", 8, 1)


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory) -> Path:
    """One temporary HFTL_CACHE for the tests that convert zoo checkpoints (test_zoo, the shipped recipes): a bare
    machine's conversions, made once per session and never in the user's cache."""
    root = tmp_path_factory.mktemp("hftl-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HFTL_CACHE", str(root))
        yield root


def child_env() -> dict[str, str]:
    """Environment of a child hftl process (CLI, accelerate launch): offline, quiet, one thread, this checkout first."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HFTL_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def prepared(recipe: dict):
    """(splits, processor, train, validation, collator) as the pipeline builds them, without a model."""
    from hftl import model as models
    from hftl.data import load_splits
    from hftl.recipe import load_recipe
    from hftl.tasks import get_task

    r = load_recipe(recipe)
    task = get_task(r.task)
    splits = load_splits(r.data, r.seed, task)
    processor = models.load_processor(task, r.model, r.data)
    return (splits, processor, *task.prepare(splits, processor, r.data))


def merge_sections(recipe: dict, sections: dict) -> dict:
    """Recipe sections given to a fixture factory update the defaults one level deep."""
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


@pytest.fixture
def text_recipe(bert_dir, text_csv, tmp_path):
    def make(**sections):
        recipe = {
            "task": "text-classification",
            "model": {"model_name_or_path": str(bert_dir)},
            "data": {"train_file": str(text_csv[0]), "validation_file": str(text_csv[1]), "max_seq_length": 16},
            "training": {"output_dir": str(tmp_path / "out"), "num_train_epochs": 3, "learning_rate": 3e-3,
                         "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "logging_steps": 2,
                         "save_strategy": "no", "dataloader_num_workers": 0},
            "seed": 0,
        }
        return merge_sections(recipe, sections)

    return make


@pytest.fixture
def image_recipe(vit_dir, image_dirs, tmp_path):
    def make(model_dir=None, **sections):
        recipe = {
            "task": "image-classification",
            "model": {"model_name_or_path": str(model_dir or vit_dir)},
            "data": {"train_dir": str(image_dirs[0]), "validation_dir": str(image_dirs[1]),
                     "augment": {"random_resized_crop": False}},
            "training": {"output_dir": str(tmp_path / "out"), "num_train_epochs": 3, "learning_rate": 2e-3,
                         "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "logging_steps": 2,
                         "save_strategy": "no", "dataloader_num_workers": 0},
            "seed": 0,
        }
        return merge_sections(recipe, sections)

    return make


# ----------------------------------------------------------------------------------------------- audio

SR = 16000
TONES = {"high": 1500.0, "low": 300.0}


def tone_clip(freq: float, seconds: float, rng, sr: int = SR):
    """A noisy sine: the two classes of the toy audio set differ in pitch."""
    import numpy as np

    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6)) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def write_audio_folder(root: Path, n_per_class: int, seed: int, sr: int = SR, fmt: str = "wav") -> Path:
    """<label>/<i>.wav clips of 0.3-0.6 s: `high` (1.5 kHz) vs `low` (300 Hz) tones."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    for label, freq in TONES.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            sf.write(root / label / f"{i}.{fmt}", tone_clip(freq, rng.uniform(0.3, 0.6), rng, sr), sr)
    return root


@pytest.fixture(scope="session")
def audio_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    return write_audio_folder(d / "train", 16, 0), write_audio_folder(d / "validation", 6, 1)


@pytest.fixture(scope="session")
def w2v_dir(tmp_path_factory):
    """A 2-layer Wav2Vec2 (hidden 32, 2 conv layers: 45-sample receptive field) with its feature extractor."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    d = tmp_path_factory.mktemp("w2v")
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                            conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, vocab_size=10, num_labels=2)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(d)
    Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True, return_attention_mask=False).save_pretrained(d)
    return d


# ----------------------------------------------------------------------------------------------- generative


@pytest.fixture(scope="session")
def gpt2_lm_dir(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 language model (tied head) with a byte-level BPE tokenizer: no pad token, a chat template."""
    from lm_assets import save_gpt2

    return save_gpt2(tmp_path_factory.mktemp("gpt2_lm"))


@pytest.fixture(scope="session")
def gpt2_nochat_dir(tmp_path_factory) -> Path:
    from lm_assets import save_gpt2

    return save_gpt2(tmp_path_factory.mktemp("gpt2_nochat"), chat=False)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    from lm_assets import save_llama

    return save_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory) -> Path:
    from lm_assets import save_t5

    return save_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="session")
def lm_files(tmp_path_factory) -> dict[str, Path]:
    """Toy corpora in every causal-lm format, and copy-task pairs for seq2seq."""
    from lm_assets import STORY, chat_rows, copy_rows, qa_rows, write_jsonl

    d = tmp_path_factory.mktemp("lm_data")
    (d / "story.txt").write_text("\n".join([STORY] * 48) + "\n")
    (d / "paragraphs.txt").write_text("the cat sat\non the mat\n\nthe dog ran\n\nto the park\n")
    return {"text": write_jsonl(d / "text.jsonl", [{"text": STORY}] * 48),
            "story": d / "story.txt", "paragraphs": d / "paragraphs.txt",
            "qa": write_jsonl(d / "qa.jsonl", qa_rows(48)), "chat": write_jsonl(d / "chat.jsonl", chat_rows(24)),
            "copy_train": write_jsonl(d / "copy_train.jsonl", copy_rows(240, 0)),
            "copy_validation": write_jsonl(d / "copy_validation.jsonl", copy_rows(30, 1))}
