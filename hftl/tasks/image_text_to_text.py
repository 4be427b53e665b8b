"""Vision-language chat fine-tuning: any AutoModelForImageTextToText (LLaVA, FastVLM, Idefics3 / SmolVLM, Qwen2-VL,
PaliGemma, Gemma 3) on TRL's columns: `messages` (role / content; content a string, or a list of {type: image} and
{type: text, text} parts) and `images` (a list per row: paths, absolute or relative to the data file, or a
datasets Image sequence). One {type: image} part per image, in order.

Each conversation is rendered with the processor's chat template; the loss covers the assistant turns only (their
text and the template's end-of-turn tokens): the prompt, the image tokens and the padding are -100. The processor
expands every image into its image tokens before anything is counted, and an example longer than
`data.max_seq_length` is refused with its row number, or dropped and counted (`data.long_examples: drop`): never
cut, so an image's tokens can never be torn from its features.

The model has three parts (hooks/stack.py): the vision tower, frozen by default (`model.freeze_vision_tower`);
the projector, trained by default (`model.freeze_multi_modal_projector`); the language model, trained
(`model.freeze_language_model`: LLaVA's first stage). With `peft:`, LoRA adapts the language model's linear layers
only, and the projector trains and is saved beside the adapter.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from types import SimpleNamespace

from transformers import AutoModelForImageTextToText

from hftl.errors import HftlError, did_you_mean
from hftl.hooks import find_parts, under
from hftl.tasks.base import Task, register_task
from hftl.tasks.causal_lm import ROLES
from hftl.tasks.generative import IGNORE, GenerativeTask, add_perplexity, grow_vocabulary, sample, samples_report

logger = logging.getLogger("hftl")
PARTS = ("text", "image")
GREEDY = SimpleNamespace(max_new_tokens=32, num_beams=1, temperature=0, seed=0)  # hftl eval's answers


# ------------------------------------------------------------------------------------------ rows


def image_parts(messages) -> int:
    return sum(1 for m in messages if not isinstance(m["content"], str)
               for part in m["content"] if part.get("type") == "image")


def check_row(messages, images, where: str, need_answer: bool = True) -> None:
    """One row's messages and images, or a one-paragraph HftlError naming `where` ("train row 3")."""
    if not isinstance(messages, list) or not messages:
        raise HftlError(f"Column 'messages' at {where} is not a list of {{role, content}} messages.")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise HftlError(f"Column 'messages' at {where}: every message needs a 'role' and a 'content' (got {m!r}).")
        if m["role"] not in ROLES:
            raise HftlError(f"Column 'messages' at {where}: unknown role {m['role']!r}; allowed: {', '.join(ROLES)}."
                            f"{did_you_mean(str(m['role']), ROLES)}")
        content = m["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise HftlError(f"Column 'messages' at {where}: a content is a string or a list of parts, not {content!r}.")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in PARTS or (kind == "text" and not isinstance(part.get("text"), str)):
                raise HftlError(f"Column 'messages' at {where}: a content part is {{type: image}} or {{type: text, "
                                f"text: ...}}, not {part!r}.")
    if need_answer and not any(m["role"] == "assistant" for m in messages):
        raise HftlError(f"Column 'messages' at {where} has no assistant turn: nothing to learn from.")
    n = image_parts(messages)
    if n != len(images or []):
        raise HftlError(f"Row {where} has {n} image placeholder(s) ({{type: image}} parts in its messages) but "
                        f"{len(images or [])} image(s) in column 'images': give one image per placeholder, in order.")


def open_image(value, base: Path | None, where: str):
    """An RGB PIL image from a path (relative to `base`), a PIL image or a datasets Image dict."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
    path = Path(value["path"] if isinstance(value, dict) else value)
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise HftlError(f"Column 'images' at {where}: image file '{path}' does not exist (relative paths are read "
                        "from the data file's folder).")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ... for broken files
        raise HftlError(f"Column 'images' at {where}: '{path}' is not a readable image ({type(e).__name__}).") from None


def resolved(value, base: Path | None):
    """What the prepared dataset keeps of an image: an absolute path, or the image itself."""
    if isinstance(value, str) and base is not None and not Path(value).is_absolute():
        return str(base / value)
    return value


def data_folder(data, split: str) -> Path | None:
    """Where relative image paths of a split's rows start: its data file's folder (else the working directory)."""
    source = data.validation_file if split == "validation" and data.validation_file else data.train_file
    return Path(source).resolve().parent if source else None


# ------------------------------------------------------------------------------------------ tokens


class Encoder:
    """Rendered text, input ids and labels of a conversation, as the processor expands its images."""

    def __init__(self, processor):
        self.processor = processor
        self.image_token_id = image_token_id(processor)

    def render(self, messages, generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(list(messages), tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def inputs(self, prompt: tuple):
        """The model's inputs for (messages, images) whose next turn is the assistant's."""
        messages, images = prompt
        return self.processor(text=[self.render(messages, generation_prompt=True)],
                              images=[images] if images else None, return_tensors="pt")

    def ids(self, text: str, images: list) -> list[int]:
        out = self.processor(text=[text], images=[images] if images else None)
        return list(out["input_ids"][0])

    def encode(self, messages, images: list) -> tuple[str, list[int], list[int]]:
        text = self.render(messages)
        ids = self.ids(text, images)
        labels = [IGNORE] * len(ids)
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before, through = self.render(messages[:k], True), self.render(messages[: k + 1])
            if not (text.startswith(before) and text.startswith(through)):
                raise HftlError("The processor's chat template renders a conversation differently from its turns one "
                                "by one, so the assistant turns cannot be located.")
            head = self.ids(before, images[: image_parts(messages[:k])])
            turn = self.ids(through, images[: image_parts(messages[: k + 1])])
            a, b = len(head), len(turn)
            if ids[:a] != head or ids[:b] != turn:  # a token across the turn's boundary: its span is not exact
                raise HftlError("The processor's tokenizer joins an assistant turn's first or last token with its "
                                "neighbour, so the turn's tokens cannot be told apart from the prompt's.")
            labels[a:b] = ids[a:b]
        return text, ids, [IGNORE if t == self.image_token_id else y for t, y in zip(ids, labels)]


def image_token_id(processor) -> int:
    return processor.tokenizer.convert_tokens_to_ids(processor.image_token)


class VisionChatCollator:
    """Batches prepared rows: the processor runs on their texts and images (so every model gets its own image
    inputs: pixel_values, image_grid_thw, pixel_attention_mask ...), padded on the right; labels padded with -100.
    The ids must be the ones the pre-flight counted."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, features: list[dict]):
        import torch

        images = [[open_image(x, None, "a batch") for x in (f.get("images") or [])] for f in features]
        enc = self.processor(text=[f["text"] for f in features], images=images if any(images) else None,
                             padding=True, padding_side="right", return_tensors="pt")
        batch = dict(enc)
        if "labels" in features[0]:
            labels = torch.full_like(enc["input_ids"], IGNORE)
            for i, f in enumerate(features):
                n = len(f["labels"])
                if enc["input_ids"][i, :n].tolist() != list(f["input_ids"]):
                    raise HftlError("The processor tokenized a conversation differently in a batch than when it was "
                                    "counted; its chat template or tokenizer depends on the batch.")
                labels[i, :n] = torch.tensor(f["labels"])
            batch["labels"] = labels
        return batch


# ------------------------------------------------------------------------------------------ the task


@register_task
class ImageTextToText(GenerativeTask, Task):
    name = "image-text-to-text"
    auto_model = AutoModelForImageTextToText
    peft_task_type = "CAUSAL_LM"
    metric_names = {"perplexity": "perplexity"}
    processor_arg = ("processor", "AutoProcessor")
    example_input = '{"messages": [...], "images": [...]}'

    def load_processor(self, model_section, path, data):
        from transformers import AutoProcessor

        source = model_section.source
        processor = AutoProcessor.from_pretrained(
            model_section.image_processor_name or path, revision=model_section.model_revision,
            trust_remote_code=model_section.trust_remote_code, cache_dir=model_section.cache_dir)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or getattr(processor, "image_processor", None) is None:
            raise HftlError(f"Recipe key 'model.model_name_or_path': '{source}' has no processor with both an image "
                            f"processor and a tokenizer ({type(processor).__name__}); task image-text-to-text needs a "
                            "vision-language checkpoint saved with its processor.")
        if not (getattr(processor, "chat_template", None) or tokenizer.chat_template):
            raise HftlError(f"Recipe key 'model.model_name_or_path': the processor of '{source}' has no chat template, "
                            "so conversations cannot be rendered as the model was trained; save one with it "
                            "(processor.chat_template).")
        token = getattr(processor, "image_token", None)
        if token is None or token not in tokenizer.get_vocab():
            raise HftlError(f"Recipe key 'model.model_name_or_path': the processor of '{source}' "
                            f"({type(processor).__name__}) has no image token{f' ({token!r} is not in its vocabulary)' if token else ''}, "
                            "so images cannot be placed in the text; task image-text-to-text needs a vision-language "
                            "processor whose tokenizer holds its image token.")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        new = [t for t in model_section.extra_special_tokens or [] if t not in tokenizer.get_vocab()]
        if new:
            tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
        return processor

    def configure_model(self, model, model_section) -> None:
        parts = find_parts(model)
        if parts is None:
            raise HftlError(f"Recipe key 'model.model_name_or_path': cannot find the vision tower, projector and "
                            f"language model of {type(model).__name__} (module names: "
                            f"{', '.join(n for n, _ in model.named_children())}); task image-text-to-text knows "
                            "LLaVA-, Idefics3- and Qwen2-VL-style models.")
        model.hftl_parts = parts
        frozen = [parts[k] for k, key in (("vision", "freeze_vision_tower"), ("projector", "freeze_multi_modal_projector"),
                                          ("language", "freeze_language_model")) if getattr(model_section, key)]
        for n, p in model.named_parameters():
            # Qwen2-VL's projector sits inside its vision tower (visual.merger): it follows its own key
            part = parts["projector"] if under(n, parts["projector"]) else next((f for f in frozen if under(n, f)), None)
            if part in frozen:
                p.requires_grad_(False)
        if model_section.freeze_language_model and model.get_output_embeddings() is not None:
            model.get_output_embeddings().requires_grad_(False)

    def peft_targets(self, model) -> str:
        """LoRA's default targets: every linear layer of the language model's blocks (none in the vision tower or
        the projector), as a regex PEFT matches on full module names."""
        from torch import nn

        language = model.hftl_parts["language"]
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, nn.Linear) and under(n, language)})
        return rf"{re.escape(language)}\..*\.({'|'.join(leaves)})"

    def adapter_modules(self, model) -> list[str]:
        parts = getattr(model, "hftl_parts", None) or find_parts(model)
        projector = [parts["projector"]] if any(p.requires_grad for n, p in model.named_parameters()
                                                if under(n, parts["projector"])) else []
        return projector + super().adapter_modules(model)

    def portable_processor(self, processor, data, model):
        """Saved padding on the left (batched generation continues every prompt from its last token); training
        pads on the right in the collator. New special tokens grow the embeddings here."""
        grow_vocabulary(model, processor.tokenizer)
        processor.tokenizer.padding_side = "left"
        processor.tokenizer.init_kwargs["padding_side"] = "left"
        return processor

    # ------------------------------------------------------------------------------------------ data

    def prepare(self, splits, processor, data, model=None):
        out = [self._prepare(ds, processor, data, split)
               for split, ds in (("train", splits.train), ("validation", splits.validation))]
        return out[0], out[1], self.collator(processor, data)

    def _prepare(self, ds, processor, data, split: str):
        if "messages" not in ds.column_names:
            raise HftlError(f"Task image-text-to-text reads TRL's columns 'messages' and 'images'; the {split} data "
                            f"has {', '.join(ds.column_names)}.{did_you_mean('messages', ds.column_names)}")
        base = data_folder(data, split)
        encoder = Encoder(processor)
        has_images = "images" in ds.column_names
        rows = {"text": [], "input_ids": [], "labels": [], "images": []}
        long = []
        for i, row in enumerate(ds):
            where = f"{split} row {i}"
            images = list(row["images"] or []) if has_images else []
            check_row(row["messages"], images, where)
            opened = [open_image(x, base, where) for x in images]
            text, ids, labels = encoder.encode(row["messages"], opened)
            if len(ids) > data.max_seq_length:
                if data.long_examples == "error":
                    raise HftlError(f"Recipe key 'data.max_seq_length' ({data.max_seq_length}): {where} is {len(ids)} "
                                    "tokens once its images are expanded into image tokens, and image tokens are never "
                                    "cut; raise max_seq_length, or set data.long_examples: drop to leave such rows out.")
                long.append(i)
                continue
            if all(y == IGNORE for y in labels[1:]):
                raise HftlError(f"Column 'messages' at {where}: its assistant turns hold no token to learn from.")
            for key, value in (("text", text), ("input_ids", ids), ("labels", labels),
                               ("images", [resolved(x, base) for x in images])):
                rows[key].append(value)
        if long:
            logger.warning("%d of %d %s examples dropped (data.long_examples: drop): longer than "
                           "data.max_seq_length=%d tokens once their images are expanded (rows %s)", len(long), len(ds),
                           split, data.max_seq_length, ", ".join(map(str, long[:10])) + (" ..." if len(long) > 10 else ""))
        if not rows["text"]:
            raise HftlError(f"Recipe key 'data.max_seq_length' ({data.max_seq_length}): every {split} example is "
                            "longer once its images are expanded; raise it.")
        return _dataset(rows, ds.features.get("images") if has_images else None)

    def collator(self, processor, data):
        return VisionChatCollator(processor)

    def prepare_inputs(self, dataset, processor, data):
        return dataset

    def input_column(self, data) -> str:
        return "messages"

    def file_inputs(self, ds, path: Path) -> tuple[list, list[str]]:
        """`hftl predict RUN_DIR prompts.jsonl`: each row's messages (no assistant turn needed) and its images,
        paths read from the file's folder."""
        if "messages" not in ds.column_names:
            raise HftlError(f"Input file '{path}' has no column 'messages'; columns are: {', '.join(ds.column_names)}.")
        base = path.resolve().parent
        values, shown = [], []
        for i, row in enumerate(ds):
            images = list(row.get("images") or [])
            check_row(row["messages"], images, f"'{path}' row {i}", need_answer=False)
            values.append({"messages": row["messages"], "images": [resolved(x, base) for x in images]})
            shown.append(_last_text(row["messages"]))
        return values, shown

    def score_text(self, model, processor, data, ds, folder: Path | None, batch_size: int = 8) -> dict:
        """`hftl eval`: the loss (and perplexity) over the assistant turns of `ds`; when every reference answer (the
        last assistant turn) is short (8 words or fewer), the exact match of greedy answers too."""
        import torch

        if folder is not None:  # a data file of its own: relative image paths start at its folder
            data = data.model_copy(update={"train_file": str(folder / "data"), "validation_file": None})
        prepared = self._prepare(ds, processor, data, "eval" if folder is not None else "validation")
        folder = folder or data_folder(data, "validation")
        collate, total, tokens = self.collator(processor, data), 0.0, 0
        model.eval()
        with torch.no_grad():
            for i in range(0, len(prepared), batch_size):
                batch = collate([prepared[j] for j in range(i, min(i + batch_size, len(prepared)))])
                n = self.loss_tokens(batch["labels"])
                total += float(model(**{k: v.to(model.device) for k, v in batch.items()}).loss) * n
                tokens += n
        metrics = {"eval_loss": total / max(tokens, 1)}
        add_perplexity(metrics)
        answers = [_last_text([m for m in row["messages"] if m["role"] == "assistant"]) for row in ds]
        if answers and all(len(a.split()) <= 8 for a in answers):
            rows = [{"messages": row["messages"][: max(k for k, m in enumerate(row["messages"]) if m["role"] == "assistant")],
                     "images": [resolved(x, folder) for x in (row.get("images") or [])]} for row in ds]
            greedy = generate(model, processor, rows, GREEDY)
            metrics["eval_exact_match"] = sum(" ".join(g.split()) == " ".join(a.split())
                                              for g, a in zip(greedy, answers)) / len(answers)
        return metrics

    # ------------------------------------------------------------------------------------------ generation

    def prompt_rows(self, prompts: list, images: list | None = None) -> list[dict]:
        """Rows of `prompts`: dicts as file_inputs gives them, or texts (each with its image from `images`)."""
        rows = []
        for k, p in enumerate(prompts):
            if isinstance(p, dict):
                rows.append(p)
                continue
            image = images[k] if images else None
            content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": p}]
            rows.append({"messages": [{"role": "user", "content": content}], "images": [image] if image else []})
        return rows

    def generate(self, model, processor, data, generation, prompts: list) -> list[str]:
        return generate(model, processor, self.prompt_rows(prompts, getattr(generation, "images", None)), generation)

    def report(self, model, processor, data, generation):
        if generation is None or not generation.prompts:
            return [], {}
        rows = self.prompt_rows(generation.prompts, generation.images)
        shown = [p + (f" [image: {Path(i).name}]" if i else "")
                 for p, i in zip(generation.prompts, generation.images or [None] * len(generation.prompts))]
        return samples_report(model, processor.tokenizer, generation, Encoder(processor).inputs, prompt_inputs(rows),
                              shown)

    # ------------------------------------------------------------------------------------------ metrics / card

    def finish_metrics(self, metrics: dict) -> None:
        add_perplexity(metrics)

    def loss_tokens(self, labels) -> int:
        return int((labels[..., 1:] != IGNORE).sum())  # the model shifts: the first position predicts nothing

    def describe_preprocessing(self, processor, data) -> str:
        return (f"{type(processor).__name__} (chat template; images expanded into image tokens), max_seq_length="
                f"{data.max_seq_length} (longer examples: {data.long_examples}), padding right with labels -100; "
                "loss on the assistant turns only")

    def usage(self, data, adapter=False, label_names=()) -> list[str]:
        load = ["from peft import PeftConfig, PeftModel", *IMPORTS, "",
                "base = AutoModelForImageTextToText.from_pretrained(PeftConfig.from_pretrained(model_id)"
                ".base_model_name_or_path)", "model = PeftModel.from_pretrained(base, model_id)"] if adapter else \
            [*IMPORTS, "", "model = AutoModelForImageTextToText.from_pretrained(model_id)"]
        return [*load, "processor = AutoProcessor.from_pretrained(model_id)",
                'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]',
                "text = processor.apply_chat_template(messages, add_generation_prompt=True)",
                'inputs = processor(text=[text], images=[[Image.open("image.png").convert("RGB")]], return_tensors="pt")',
                "out = model.generate(**inputs, max_new_tokens=32, do_sample=False)",
                'print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']

    def adapter_usage(self, labels_kwargs: str) -> list[str]:
        return self.usage(None, adapter=True)


IMPORTS = ["from PIL import Image", "from transformers import AutoModelForImageTextToText, AutoProcessor"]


def _last_text(messages) -> str:
    content = messages[-1]["content"]
    return content if isinstance(content, str) else " ".join(p["text"] for p in content if p.get("type") == "text")


def _dataset(rows: dict, image_feature):
    from datasets import Dataset, Features, List, Value

    features = {"text": Value("string"), "input_ids": List(Value("int64")), "labels": List(Value("int64"))}
    paths = all(isinstance(x, str) for r in rows["images"] for x in r)
    features["images"] = List(Value("string")) if paths or image_feature is None else image_feature
    return Dataset.from_dict(rows, features=Features(features))


def generate(model, processor, rows: list[dict], generation) -> list[str]:
    """Each row's answer (messages + images, the assistant's turn to speak), decoded as `generation` says
    (generative.sample: the model's mode and the global random state are left as they were)."""
    return sample(model, processor.tokenizer, prompt_inputs(rows), generation, Encoder(processor).inputs)


def prompt_inputs(rows: list[dict]) -> list[tuple]:
    """(messages, opened images) per row: every image opened (and checked) before anything generates."""
    return [(row["messages"], [open_image(x, None, f"prompt {i}") for x in row.get("images") or []])
            for i, row in enumerate(rows)]
