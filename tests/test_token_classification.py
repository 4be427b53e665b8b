"""Token classification (NER): labels aligned to sub-tokens, seqeval on words, and runs that learn a toy entity set.

The tiny BERT here has a word-piece vocabulary in which some entity words split into several sub-tokens
("berlin" -> ber ##lin, "jones" -> jo ##nes), so the alignment and the mapping back to words are exercised.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import hftl
from conftest import child_env, prepared
from hftl.errors import HftlError

ROOT = Path(__file__).resolve().parents[1]
FIRST = ["alice", "bob", "carol", "dave"]  # B-PER
LAST = ["smith", "jones"]  # I-PER after a first name; "jones" -> jo ##nes
PLACES = ["paris", "london", "berlin"]  # B-LOC; "berlin" -> ber ##lin ("new york": B-LOC I-LOC)
FILLER = ["the", "met", "in", "visited", "today", "and", "went", "to", "saw", "friend", "of"]
PIECES = ["jo", "##nes", "ber", "##lin", "new", "york"]
TAGS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]  # the training tags, sorted


@pytest.fixture(scope="session")
def ner_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with a word-piece tokenizer (a fast one: word_ids())."""
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("ner_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FIRST, "smith", *PLACES[:2], *FILLER, *PIECES]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(d)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(d)
    return d


def _person(rng):
    first = rng.choice(FIRST)
    return ([first], ["B-PER"]) if rng.random() < 0.5 else ([first, rng.choice(LAST)], ["B-PER", "I-PER"])


def _place(rng):
    return (["new", "york"], ["B-LOC", "I-LOC"]) if rng.random() < 0.25 else ([rng.choice(PLACES)], ["B-LOC"])


def make_ner_rows(n: int, seed: int) -> list[dict]:
    """Sentences like "alice jones visited ber ##lin today": entities are their words, the rest is O."""
    rng = random.Random(seed)
    templates = [("P", "visited", "L"), ("P", "met", "P", "in", "L"), ("the", "friend", "of", "P", "went", "to", "L"),
                 ("P", "and", "P", "saw", "L", "today"), ("today", "P", "went", "to", "L")]
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for part in rng.choice(templates):
            words, t = _person(rng) if part == "P" else _place(rng) if part == "L" else ([part], ["O"])
            tokens += words
            tags += t
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def ner_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ner_data")
    return (write_jsonl(d / "train.jsonl", make_ner_rows(80, 0)),
            write_jsonl(d / "validation.jsonl", make_ner_rows(24, 1)))


@pytest.fixture
def ner_recipe(ner_bert_dir, ner_files, tmp_path):
    def make(**sections):
        from conftest import merge_sections

        recipe = {
            "task": "token-classification",
            "model": {"model_name_or_path": str(ner_bert_dir)},
            "data": {"train_file": str(ner_files[0]), "validation_file": str(ner_files[1]), "max_seq_length": 32},
            "training": {"output_dir": str(tmp_path / "out"), "num_train_epochs": 8, "learning_rate": 5e-3,
                         "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "logging_steps": 5,
                         "save_strategy": "no", "dataloader_num_workers": 0, "eval_strategy": "no"},
            "seed": 0,
        }
        return merge_sections(recipe, sections)

    return make


def _one_row_files(tmp_path, tokens, tags):
    rows = [{"tokens": tokens, "ner_tags": tags}, *make_ner_rows(6, 3)]
    return {"train_file": str(write_jsonl(tmp_path / "t.jsonl", rows)),
            "validation_file": str(write_jsonl(tmp_path / "v.jsonl", rows))}


# ----------------------------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("label_all_tokens", [False, True])
def test_labels_sit_on_the_first_sub_token(label_all_tokens, ner_recipe, tmp_path):
    words = ["alice", "jones", "visited", "berlin", "today"]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O"]
    data = {**_one_row_files(tmp_path, words, tags), "label_all_tokens": label_all_tokens}
    splits, tok, train, validation, _ = prepared(ner_recipe(data=data))
    assert splits.label_names == TAGS
    row = train[0]
    pieces = tok.convert_ids_to_tokens(row["input_ids"])
    assert pieces == ["[CLS]", "alice", "jo", "##nes", "visited", "ber", "##lin", "today", "[SEP]"]
    name = {i: n for i, n in enumerate(TAGS)} | {-100: None}
    first_only = [None, "B-PER", "I-PER", None, "O", "B-LOC", None, "O", None]
    every = [None, "B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", None]  # B- continues as I-
    assert [name[i] for i in row["labels"]] == (every if label_all_tokens else first_only)
    assert [name[i] for i in validation[0]["labels"]] == first_only  # metrics stay per word either way


def test_continuation_keeps_tags_without_an_i_counterpart():
    from hftl.tasks.token_classification import align_labels, continuation_ids

    names = ["B-MISC", "B-PER", "I-PER", "O"]
    assert continuation_ids(names) == [0, 2, 2, 3]  # B-MISC has no I-MISC: it stays B-MISC
    assert align_labels([None, 0, 0, 1, 1, 1, None], [1, 0], continuation_ids(names)) == [-100, 1, 2, 0, 0, 0, -100]
    assert align_labels([None, 0, 0, 1, 1, 1, None], [1, 0]) == [-100, 1, -100, 0, -100, -100, -100]


def test_truncation_drops_the_words_beyond_max_seq_length(ner_recipe, tmp_path):
    words = ["alice", "visited", "berlin", "and", "london"]
    data = {**_one_row_files(tmp_path, words, ["B-PER", "O", "B-LOC", "O", "B-LOC"]), "max_seq_length": 5}
    _, tok, train, _, collator = prepared(ner_recipe(data=data))
    assert tok.convert_ids_to_tokens(train[0]["input_ids"]) == ["[CLS]", "alice", "visited", "ber", "[SEP]"]
    assert train[0]["labels"] == [-100, 1, 4, 0, -100]
    batch = collator([train[i] for i in range(3)])  # padded per batch, labels with -100
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_classlabel_tags_keep_their_names_and_order(ner_recipe, tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]  # conll2003's order; MISC never occurs
    index = {n: i for i, n in enumerate(names)}
    rows = make_ner_rows(12, 4)
    features = Features({"words": List(Value("string")), "tags": List(ClassLabel(names=names))})
    ds = Dataset.from_dict({"words": [r["tokens"] for r in rows],
                            "tags": [[index[t] for t in r["ner_tags"]] for r in rows]}, features=features)
    DatasetDict(train=ds, validation=ds).save_to_disk(tmp_path / "saved")
    data = {"dataset_name": str(tmp_path / "saved"), "text_column_name": "words", "label_column_name": "tags",
            "train_file": None, "validation_file": None}
    splits, _, train, _, _ = prepared(ner_recipe(data=data))
    assert splits.label_names == names
    first = [i for i in train[0]["labels"] if i != -100]
    assert [names[i] for i in first] == rows[0]["ner_tags"]


@pytest.mark.parametrize("tokens, tags, match", [
    (["alice", "visited"], ["B-PER"],
     r"data\.text_column_name' and 'data\.label_column_name': train row 0 has 2 words"),
    (["alice", "visited"], "B-PER O", r"data\.label_column_name': column 'ner_tags' must hold a list of tags per row"),
    ("alice visited", ["B-PER", "O"],
     r"data\.text_column_name\) must hold a list of words .*split the text into words"),
])
def test_malformed_rows_are_one_clear_error(tokens, tags, match, ner_recipe, tmp_path):
    bad = {"tokens": tokens, "ner_tags": tags}
    # a string where the other rows have lists: arrow cannot load that column at all, so such a file has one row
    rows = [bad] if isinstance(tags, str) or isinstance(tokens, str) else [bad, *make_ner_rows(4, 3)]
    path = str(write_jsonl(tmp_path / "t.jsonl", rows))
    with pytest.raises(HftlError, match=match):
        prepared(ner_recipe(data={"train_file": path, "validation_file": path}))


def test_validation_tags_unseen_in_training_are_refused(ner_recipe, ner_files, tmp_path):
    rows = make_ner_rows(6, 5)
    rows[2]["ner_tags"][0] = "B-ORG"
    data = {"validation_file": str(write_jsonl(tmp_path / "v.jsonl", rows))}
    with pytest.raises(HftlError, match=r"data\.label_column_name': the validation tags \['B-ORG'\] "
                                        r"\(first at row 2\).*tags: B-LOC, B-PER, I-LOC, I-PER, O"):
        prepared(ner_recipe(data=data))


def test_a_slow_tokenizer_is_refused_naming_the_key(ner_recipe, monkeypatch):
    from transformers import AutoTokenizer

    class Slow:
        is_fast = False

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: Slow())
    with pytest.raises(HftlError, match=r"model\.tokenizer_name': token classification needs a fast tokenizer"):
        prepared(ner_recipe())


# ----------------------------------------------------------------------------------------------- metrics


def test_metrics_score_words_by_their_first_sub_token(ner_recipe, tmp_path):
    """An entity predicted right on each word's first sub-token counts as right whatever the continuation
    sub-tokens say; the numbers are seqeval's on the word-level tags."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    from hftl.tasks import get_task

    words = [["alice", "jones", "visited", "berlin", "today"], ["bob", "met", "carol", "in", "paris"]]
    truth = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-PER", "O", "B-PER", "O", "B-LOC"]]
    predicted = [list(truth[0]), ["B-PER", "O", "O", "O", "B-LOC"]]  # "carol" missed
    rows = [{"tokens": w, "ner_tags": t} for w, t in zip(words, truth)] + make_ner_rows(4, 6)
    path = str(write_jsonl(tmp_path / "rows.jsonl", rows))
    splits, tok, _, validation, collator = prepared(ner_recipe(data={"train_file": path, "validation_file": path}))
    labels = collator([validation[0], validation[1]])["labels"].numpy()
    index = {n: i for i, n in enumerate(splits.label_names)}
    logits = np.zeros((*labels.shape, len(index)), dtype=np.float32)
    logits[..., index["B-PER"]] = 1.0  # continuation sub-tokens (##nes, ##lin), specials, padding: a wrong tag
    for row, tags in enumerate(predicted):
        first = np.flatnonzero(labels[row] != -100)
        assert len(first) == len(tags)
        logits[row, first, :] = 0.0
        logits[row, first, [index[t] for t in tags]] = 5.0
    assert tok.convert_ids_to_tokens(validation[0]["input_ids"])[3] == "##nes"  # row 0 has continuations
    task = get_task("token-classification")
    got = task.metrics_for(splits.label_names)((logits, labels))
    want = {"f1": f1_score(truth, predicted), "precision": precision_score(truth, predicted),
            "recall": recall_score(truth, predicted), "accuracy": accuracy_score(truth, predicted)}
    assert got == pytest.approx(want)
    assert got["precision"] == 1.0 and got["recall"] == pytest.approx(4 / 5)  # no entity from ##lin's B-PER
    # after preprocess_logits_for_metrics (tag ids), padded with -100 as the Trainer pads across batches
    ids = task.preprocess_logits_for_metrics(torch.from_numpy(logits), None).numpy()
    padded = np.pad(ids, ((0, 0), (0, 3)), constant_values=-100), np.pad(labels, ((0, 0), (0, 3)), constant_values=-100)
    assert task.metrics_for(splits.label_names)(padded) == got


def test_an_entity_split_by_a_wrong_continuation_word_is_wrong():
    """Entity-level: B-PER I-PER predicted as B-PER O is a wrong entity (word accuracy still counts the B-)."""
    from hftl.tasks.token_classification import seqeval_metrics

    names = TAGS
    labels = np.array([[-100, 1, 3, -100, 4, 0, -100]])
    preds = np.array([[4, 1, 4, 3, 4, 0, 4]])  # "jones" (first sub-token) predicted O
    got = seqeval_metrics((preds, labels), names)
    assert got["precision"] == pytest.approx(0.5) and got["recall"] == pytest.approx(0.5)
    assert got["accuracy"] == pytest.approx(3 / 4)


# ----------------------------------------------------------------------------------------------- runs


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def _card_code(out: Path) -> str:
    import re

    card = (out / "README.md").read_text()
    code = re.search(r"## How to use\n\n```python\n(.*?)\n```", card, re.S).group(1)
    assert f'model_id = "{out}"' in code and '"Hugging Face is based in New York City"' in code
    return code.replace('"Hugging Face is based in New York City"', '"alice jones visited berlin today"')


def _run_card(out: Path) -> list[dict]:
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_card_code(out), "card", "exec"), {})
    return eval(printed.getvalue(), {"np": np, "float32": np.float32})  # noqa: S307 -- our own card's printout


def _groups(entities: list[dict]) -> list[tuple[str, str]]:
    return [(e["entity_group"], e["word"]) for e in entities]


def test_ner_learns_and_its_outputs_load_everywhere(ner_recipe, one_thread):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForTokenClassification

    from hftl.tasks import get_task

    r = hftl.train(ner_recipe())
    assert r.metrics["eval_f1"] >= 0.9, r.metrics  # an untrained head scores ~0 entity F1
    assert r.metrics["eval_accuracy"] >= 0.9 and {"eval_precision", "eval_recall"} <= set(r.metrics)
    out = r.output_dir
    assert r.model.config.id2label == dict(enumerate(TAGS))
    assert json.loads((out / "labels.json").read_text()) == TAGS
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "token-classification"
    assert {e.metric_type for e in card.data.eval_results} == {"f1", "precision", "recall", "accuracy"}
    assert "first sub-token of each word carries its tag" in card.text
    # the saved model, hftl.load_model and plain transformers: the same logits
    batch = r.trainer.data_collator([r.trainer.eval_dataset[i] for i in range(4)])
    expected = _logits(r.model, batch)
    assert torch.allclose(_logits(hftl.load_model(out), batch), expected, atol=1e-5)
    assert torch.allclose(_logits(AutoModelForTokenClassification.from_pretrained(out), batch), expected, atol=1e-5)
    # the card's pipeline() code, on a sentence of the toy domain: entities grouped per word
    assert _groups(_run_card(out)) == [("PER", "alice jones"), ("LOC", "berlin")]
    # prepare_inputs: unlabelled words -> a batch; word_ids map the predictions back to the words
    from datasets import Dataset

    recipe = hftl.load_recipe(out / "recipe.yaml")
    task = get_task("token-classification")
    words = [["bob", "smith", "went", "to", "new", "york"], ["carol", "saw", "paris"]]
    inputs = task.prepare_inputs(Dataset.from_dict({"tokens": words}), r.trainer.processing_class, recipe.data)
    assert "labels" not in inputs.column_names and "word_ids" in inputs.column_names
    batch = r.trainer.data_collator([inputs[i] for i in range(len(inputs))])
    assert "word_ids" not in batch
    ids = _logits(r.model, batch).argmax(-1)
    per_word = []
    for row, word_ids in enumerate(inputs["word_ids"]):
        seen, tags = set(), []
        for pos, w in enumerate(word_ids):
            if w >= 0 and w not in seen:
                seen.add(w)
                tags.append(TAGS[ids[row, pos]])
        per_word.append(tags)
    assert per_word == [["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"], ["B-PER", "O", "B-LOC"]]


def test_ner_lora_trains_and_reloads(ner_recipe, one_thread):
    r = hftl.train(ner_recipe(peft={"method": "lora", "r": 8}, training={"learning_rate": 2e-2}))
    out = r.output_dir
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "TOKEN_CLS" and "classifier" in config["modules_to_save"]
    assert r.metrics["eval_f1"] >= 0.8, r.metrics
    batch = r.trainer.data_collator([r.trainer.eval_dataset[i] for i in range(4)])
    assert torch.allclose(_logits(hftl.load_model(out), batch), _logits(r.model, batch), atol=1e-5)
    # the card's PEFT loading code (AutoModelForTokenClassification + PeftModel + pipeline) finds the same entities
    assert _groups(_run_card(out)) == [("PER", "alice jones"), ("LOC", "berlin")]


def test_ner_head_only_with_cached_features_matches_the_plain_run(ner_recipe, one_thread, tmp_path):
    """strategy.preset feature_extraction caches the backbone's per-token outputs; the head trains the same."""
    fast = {"num_train_epochs": 2, "learning_rate": 1e-2}
    cached = hftl.train(ner_recipe(strategy={"preset": "feature_extraction"}, training=fast))
    plain = hftl.train(ner_recipe(strategy={"preset": "feature_extraction", "cache_features": False},
                                  training={**fast, "output_dir": str(tmp_path / "plain")}))
    assert cached.metrics.get("cached_features") is True and "cached_features" not in plain.metrics
    for key in ("eval_loss", "eval_f1", "eval_accuracy"):
        assert cached.metrics[key] == pytest.approx(plain.metrics[key], abs=1e-4), key


def test_prompt_tuning_is_refused_for_token_classification(ner_recipe):
    with pytest.raises(hftl.RecipeError, match=r"peft\.method': prompt_tuning"):
        hftl.load_recipe(ner_recipe(peft={"method": "prompt_tuning"}))


# ----------------------------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_cli_train_with_label_all_tokens(ner_recipe, tmp_path):
    path = tmp_path / "ner.yaml"
    path.write_text(yaml.safe_dump(ner_recipe()))
    proc = subprocess.run([sys.executable, "-m", "hftl.cli", "train", str(path), "data.label_all_tokens=true"],
                          capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: " in proc.stdout and "eval_f1" in proc.stdout
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text())["eval_f1"] >= 0.9
    assert hftl.load_recipe(out / "recipe.yaml").data.label_all_tokens is True
    assert "every sub-token of a word carries its tag" in (out / "README.md").read_text()


DDP_SCRIPT = r"""
import json, sys, torch, hftl
from hftl.tasks.token_classification import seqeval_metrics
r = hftl.train(json.loads(sys.argv[1]))
# the same model evaluated by this one process over the whole eval set: must equal the gathered metrics
loader = torch.utils.data.DataLoader(r.trainer.eval_dataset, batch_size=5, collate_fn=r.trainer.data_collator)
preds, labels = [], []
with torch.no_grad():
    for batch in loader:
        y = batch.pop("labels")
        p = r.model.eval()(**batch).logits.argmax(-1)
        preds += [row for row in p.tolist()]
        labels += [row for row in y.tolist()]
width = max(map(len, labels))
pad = lambda rows: [row + [-100] * (width - len(row)) for row in rows]
local = seqeval_metrics((torch.tensor(pad(preds)).numpy(), torch.tensor(pad(labels)).numpy()), r.label_names)
json.dump({"world_size": r.trainer.args.world_size, "f1": r.metrics["eval_f1"], "accuracy": r.metrics["eval_accuracy"],
           "local": local, "n": len(labels)}, open(f"{sys.argv[2]}/rank{r.trainer.args.process_index}.json", "w"))
"""


@pytest.mark.slow
def test_ddp_two_processes_gather_variable_length_predictions(ner_recipe, tmp_path):
    """Each rank's eval batches have their own sequence length: the gathered seqeval equals a 1-process one."""
    script = tmp_path / "ddp_ner.py"
    script.write_text(DDP_SCRIPT)
    # one epoch: a half-trained model, so that equal metrics are not just two perfect scores
    recipe = ner_recipe(training={"num_train_epochs": 1, "per_device_train_batch_size": 4,
                                  "per_device_eval_batch_size": 5})
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
         "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
         json.dumps(recipe), str(tmp_path)], capture_output=True, text=True, env=child_env(), timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    for r in ranks:
        assert r["n"] == 24
        assert r["f1"] == pytest.approx(r["local"]["f1"]) and r["accuracy"] == pytest.approx(r["local"]["accuracy"])
    assert 0.1 < ranks[0]["f1"] < 0.95, ranks[0]


def test_length_sorted_micro_batches_give_the_whole_batch_update(ner_recipe, one_thread):
    """speed.micro_batch with a mean over labelled tokens: each micro-batch weighs by its labelled tokens."""
    from test_speed import same_update

    same_update(ner_recipe())
