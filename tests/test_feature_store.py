"""The on-disk feature cache: a second run of the same backbone on the same data skips the backbone; any change
to what the backbone sees (an edited example, the pooling, the weights, the preprocessing) misses; bounded size,
concurrent writers, `hftl cache info|clear`, off switch."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("HFTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HFTL_FEATURE_CACHE", raising=False)
    monkeypatch.delenv("HFTL_FEATURE_CACHE_MB", raising=False)
    return tmp_path / "cache" / "features"


def _hits(recipe: dict) -> int:
    """Splits of the recipe's data served from disk when its feature cache is built."""
    from hftl.training.setup import setup
    from hftl.recipe import load_recipe

    s = setup(load_recipe(recipe))
    assert s.cache is not None
    s.cache.datasets(s.train_dataset, s.eval_dataset)
    return s.cache.hits


def _fx(text_recipe, **sections):
    strategy = {"preset": "feature_extraction", "cache_features": True}
    return text_recipe(strategy=strategy, **sections)


def test_second_run_reads_the_features_and_trains_the_same_head(text_recipe, store, tmp_path):
    import hftl

    first = _fx(text_recipe, training={"learning_rate": 1e-2, "output_dir": str(tmp_path / "a")})
    assert _hits(first) == 0
    entries = sorted(store.glob("*.safetensors"))
    assert len(entries) == 2  # train and validation
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~_umask() for p in entries)
    # another head learning rate: nothing the backbone sees changed
    second = _fx(text_recipe, training={"learning_rate": 5e-2, "output_dir": str(tmp_path / "b")})
    assert _hits(second) == 2
    hit = hftl.train(second)
    os.environ["HFTL_FEATURE_CACHE"] = "0"
    try:  # the same run computing its features afresh
        fresh = hftl.train({**second, "training": {**second["training"], "output_dir": str(tmp_path / "c")}})
    finally:
        del os.environ["HFTL_FEATURE_CACHE"]
    for (n, a), b in zip(hit.model.classifier.state_dict().items(), fresh.model.classifier.state_dict().values()):
        assert torch.equal(a, b), n
    assert hit.metrics["eval_accuracy"] == fresh.metrics["eval_accuracy"]


def _umask() -> int:
    from hftl.files import umask

    return umask()


def test_any_change_to_the_backbone_inputs_misses(text_recipe, text_csv, store, tmp_path, bert_dir):
    assert _hits(_fx(text_recipe)) == 0
    assert _hits(_fx(text_recipe)) == 2
    # one edited training example: the training split misses, the validation split still hits
    rows = list(csv.DictReader(open(text_csv[0])))
    rows[3]["text"] = rows[3]["text"] + " indeed"
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert _hits(_fx(text_recipe, data={"train_file": str(edited)})) == 1
    # other preprocessing, other pooling, other weights: both miss
    assert _hits(_fx(text_recipe, data={"max_seq_length": 4})) == 0  # 4-word texts: truncated now
    assert _hits(_fx(text_recipe, model={"pooling": "mean"})) == 0
    other = tmp_path / "other_bert"
    shutil.copytree(bert_dir, other)
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(other)
    with torch.no_grad():
        m.bert.encoder.layer[0].output.dense.bias.add_(1e-3)
    m.save_pretrained(other)
    assert _hits(_fx(text_recipe, model={"model_name_or_path": str(other)})) == 0


def test_the_folder_stays_under_its_bound(text_recipe, store, monkeypatch):
    monkeypatch.setenv("HFTL_FEATURE_CACHE_MB", "0.000001")  # below one entry: only the newest stays
    _hits(_fx(text_recipe))
    _hits(_fx(text_recipe, data={"max_seq_length": 4}))
    assert len(list(store.glob("*.safetensors"))) == 1
    assert not list(store.glob(".*.tmp"))


def test_off_switch_writes_nothing(text_recipe, store, monkeypatch):
    monkeypatch.setenv("HFTL_FEATURE_CACHE", "0")
    assert _hits(_fx(text_recipe)) == 0
    assert not store.exists()


CONCURRENT = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from hftl.training.setup import setup
from hftl.recipe import load_recipe
s = setup(load_recipe(json.loads(sys.argv[1])))
s.cache.datasets(s.train_dataset, s.eval_dataset)
print(s.cache.hits)
"""


@pytest.mark.slow
def test_two_concurrent_runs_share_one_entry_per_split(text_recipe, store, tmp_path):
    script = tmp_path / "one.py"
    script.write_text(CONCURRENT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HFTL_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1")
    recipe = json.dumps(_fx(text_recipe))
    procs = [subprocess.Popen([sys.executable, str(script), recipe, str(ROOT)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert len(list(store.glob("*.safetensors"))) == 2 and not list(store.glob(".*.tmp"))
    assert _hits(_fx(text_recipe)) == 2  # whole, readable entries


def test_cli_info_and_clear(text_recipe, store):
    _hits(_fx(text_recipe))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    info = subprocess.run([sys.executable, "-m", "hftl.cli", "cache", "info"], capture_output=True, text=True, env=env)
    assert info.returncode == 0 and "2 entries" in info.stdout and str(store) in info.stdout
    cleared = subprocess.run([sys.executable, "-m", "hftl.cli", "cache", "clear"], capture_output=True, text=True, env=env)
    assert cleared.returncode == 0 and "removed 2 feature cache entries" in cleared.stdout
    assert not list(Path(store).glob("*.safetensors"))


def test_tokenized_splits_are_fingerprinted_by_the_tokenizer_and_settings(bert_dir, text_csv, tmp_path):
    """hftl names the tokenize map's result itself (datasets would pickle the tokenizer to do it, ~0.5 s a split):
    the same tokenizer and settings reuse datasets' cache file; another max length or vocabulary never does."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from hftl.recipe import DataSection
    from hftl.tasks.text_classification import TextClassification

    ds = load_dataset("csv", data_files=str(text_csv[0]), split="train", cache_dir=str(tmp_path / "hf"))
    tok = AutoTokenizer.from_pretrained(bert_dir)
    task = TextClassification()

    def data(n):
        return DataSection(train_file=str(text_csv[0]), max_seq_length=n)

    first = task._tokenize(ds, tok, data(64), ["text"], "train")
    tok("something else", truncation=True, max_length=3)  # a call in between leaves the backend truncating at 3
    again = task._tokenize(ds, tok, data(64), ["text"], "train")
    assert again._fingerprint == first._fingerprint and again.cache_files == first.cache_files
    assert again["input_ids"] == first["input_ids"]

    short = task._tokenize(ds, tok, data(4), ["text"], "train")
    assert short._fingerprint != first._fingerprint
    assert max(map(len, short["input_ids"])) == 4 < max(map(len, first["input_ids"]))
    assert tok.add_tokens(["zzqx"]) == 1  # another vocabulary: another fingerprint, even if no text uses it
    assert task._tokenize(ds, tok, data(64), ["text"], "train")._fingerprint != first._fingerprint
