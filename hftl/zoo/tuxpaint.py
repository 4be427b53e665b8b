"""The zoo's sets from Tux Paint's stamps (Debian `tuxpaint-stamps-default`): spoken descriptions (which language;
which digit), the stamp images themselves (6 classes) and every stamp with its English description and category
(image-text pairs)."""

from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path

from hftl.errors import HftlError
from hftl.zoo.sources import choose_config

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
    choose_config("spoken-language", config)
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
    choose_config("spoken-digits", config)
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

    choose_config("stamps", config)
    names = [name for name, _ in STAMP_CLASSES]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})

    def build(rows):
        return Dataset.from_dict({"image": [im for _, _, im in rows], "label": [lb for _, lb, _ in rows]},
                                 features=features)

    train, val = stamps_split()
    return DatasetDict(train=build(train), validation=build(val))




CAPTION_VALIDATION = 0.2  # the share of each category's stamps that validates (rounded down)


def stamp_category(relative: Path) -> str:
    """A stamp's category: the folder below the top one (animals/birds -> birds, food/fruit/cartoon -> fruit), or
    the top one for stamps directly in it or in a style folder (people/cartoon -> people); '_' read as a space."""
    parts = relative.parent.parts
    name = parts[1] if len(parts) > 1 and parts[1] != "cartoon" else parts[0]
    return name.replace("_", " ")


def stamp_captions_split() -> tuple[list[dict], list[dict]]:
    """(train, validation) rows of zoo:stamps-captions: {path, image, caption, category}; see `_stamps_captions`."""
    root = _stamps("stamps-captions")
    by_category: dict[str, list[dict]] = {}
    seen = set()
    for text in sorted(root.rglob("*.txt")):
        png = text.with_suffix(".png")
        caption = text.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        image = stamp_image(str(png)) if png.is_file() else None
        if image is None or not caption or not caption[0].strip():
            continue
        digest = stamp_pixels_digest(image)
        if digest in seen:
            continue
        seen.add(digest)
        category = stamp_category(text.relative_to(root))
        by_category.setdefault(category, []).append(
            {"path": str(png), "image": image, "caption": caption[0].strip(), "category": category})
    if len(by_category) < 2:
        raise HftlError(f"The zoo dataset 'zoo:stamps-captions' found {sum(map(len, by_category.values()))} described "
                        f"stamps under '{root}'; reinstall the Debian package: "
                        "apt-get install --reinstall tuxpaint-stamps-default")
    train, val = [], []
    for category in sorted(by_category):
        rows = by_category[category]
        random.Random(0).shuffle(rows)
        n_val = int(len(rows) * CAPTION_VALIDATION)
        val += rows[:n_val]
        train += rows[n_val:]
    return train, val


DESCRIBE = "Describe this stamp."


def _stamps_captions(config: str | None):
    """Image-text pairs from Tux Paint's stamps (Debian `tuxpaint-stamps-default`): every stamp that has a
    description file (<name>.txt) and a raster image beside it (<name>.png), as `image` (RGB on white, at its own
    size: `stamp_image`), `caption` (the file's first line: the English description, e.g. "An Adelaide Rosella.";
    the other lines are translations) and `category` (a ClassLabel of the stamp's folder: `stamp_category`).
    Package 2022.06.04: 952 description files, 785 with a PNG, 784 after pixel duplicates are dropped (the first
    in path order is kept), in 68 categories of 1 to 158 stamps (alphabets 158, mammals 67, fruit 41, birds 38, ...):
    654 train / 130 validation.
    Split: per category, its stamps in path order shuffled with `random.Random(0)`; the first 20% (rounded down)
    validate, the rest train, so a stamp is in one split only. For vision-language fine-tuning (describe a stamp,
    say what it is) and dual encoders (image <-> caption, zero-shot by category name). No Hub origin.
    Config `describe`: the same stamps as TRL's vision-language columns, `messages` (the user turn: the image, then
    "Describe this stamp."; the assistant's: the caption) and `images` (a list of one image), for image-text-to-text.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value

    describe = choose_config("stamps-captions", config, ("default", "describe")) == "describe"
    train, val = stamp_captions_split()
    names = sorted({r["category"] for r in train + val})
    features = Features({"image": Image(), "caption": Value("string"), "category": ClassLabel(names=names)})

    def build(rows):
        if describe:
            messages = [[{"role": "user", "content": [{"type": "image", "text": None},
                                                      {"type": "text", "text": DESCRIBE}]},
                         {"role": "assistant", "content": [{"type": "text", "text": r["caption"]}]}] for r in rows]
            return Dataset.from_dict({"messages": messages, "images": [[r["image"]] for r in rows]},
                                     features=Features({"messages": List({"role": Value("string"), "content": List(
                                         {"type": Value("string"), "text": Value("string")})}),
                                         "images": List(Image())}))
        return Dataset.from_dict({"image": [r["image"] for r in rows], "caption": [r["caption"] for r in rows],
                                  "category": [names.index(r["category"]) for r in rows]}, features=features)

    return DatasetDict(train=build(train), validation=build(val))


DATASETS = {"spoken-language": _spoken_language, "spoken-digits": _spoken_digits, "stamps": _stamps_images,
            "stamps-captions": _stamps_captions}
