"""`hftl.runs.export.export`: ONNX, INT8 and pruned exports of tiny trained runs (text BERT, image ViT, a LoRA
run, a conv net), checked against the float model on the toy validation set; bad inputs refused with nothing
written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import hftl
from hftl.errors import HftlError
from hftl.data import batches
from hftl.runs.compare import eval_set
from hftl.runs.export import export
from hftl.runs.load import load_model, read_run

TRAIN = {"num_train_epochs": 3, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "logging_steps": 4,
         "save_strategy": "no", "dataloader_num_workers": 0, "report_to": "none"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(recipe: dict) -> Path:
    result = hftl.train(recipe)
    assert result.metrics["eval_accuracy"] >= 0.9, result.metrics  # a trained model: clear margins to agree on
    return result.output_dir


@pytest.fixture(scope="module")
def text_run(bert_dir, text_csv, tmp_path_factory, single_thread) -> Path:
    out = tmp_path_factory.mktemp("export") / "text"
    return _train({"task": "text-classification", "model": {"model_name_or_path": str(bert_dir)},
                   "data": {"train_file": str(text_csv[0]), "validation_file": str(text_csv[1]), "max_seq_length": 16},
                   "training": {**TRAIN, "learning_rate": 3e-3, "output_dir": str(out)}, "seed": 0})


@pytest.fixture(scope="module")
def image_run(vit_dir, image_dirs, tmp_path_factory, single_thread) -> Path:
    out = tmp_path_factory.mktemp("export") / "image"
    return _train({"task": "image-classification", "model": {"model_name_or_path": str(vit_dir)},
                   "data": {"train_dir": str(image_dirs[0]), "validation_dir": str(image_dirs[1]),
                            "augment": {"random_resized_crop": False}},
                   "training": {**TRAIN, "learning_rate": 2e-3, "output_dir": str(out)}, "seed": 0})


@pytest.fixture(scope="module")
def runs(text_run, image_run):
    return {"text": text_run, "image": image_run}


@pytest.fixture(scope="module")
def onnx_exports(runs):
    return {}


def float_and_exported(run_dir: Path, exported: Path):
    """(float logits, exported logits, labels) over the rebuilt validation set."""
    run = read_run(run_dir)
    model, other = load_model(run_dir), load_model(exported)
    ds, collator, _ = eval_set(run, model)
    ref, out, labels = [], [], []
    with torch.no_grad():
        for b in batches(ds, collator, 5):  # another batch size than the export's
            batch, y = b.inputs, b.labels
            ref.append(model(**batch).logits)
            out.append(other(**batch).logits)
            labels.append(y)
    return torch.cat(ref), torch.cat(out), torch.cat(labels)


def check_readable(run_dir: Path, exported: Path) -> None:
    run, back = read_run(run_dir), read_run(exported)
    assert back.label_names == run.label_names and back.task.name == run.task.name
    assert (exported / "recipe.yaml").read_text() == (run_dir / "recipe.yaml").read_text()
    assert not list(exported.parent.glob(f".{exported.name}.*")), "a staging folder was left behind"


@pytest.mark.parametrize("kind", ["text", "image"])
def test_onnx_export_matches_pytorch(kind, runs, onnx_exports, capsys):
    run_dir = runs[kind]
    target = export(run_dir, onnx=True)
    onnx_exports[kind] = target
    assert target == run_dir / "exported-onnx"
    assert (target / "model.onnx").is_file() and (target / "config.json").is_file()
    assert (target / ("tokenizer_config.json" if kind == "text" else "preprocessor_config.json")).is_file()
    check_readable(run_dir, target)
    model = load_model(target)
    assert model.eval() is model and model.config.id2label == load_model(run_dir).config.id2label
    ref, out, _ = float_and_exported(run_dir, target)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
    assert (out - ref).abs().max() < 1e-4
    numbers = json.loads((target / "export.json").read_text())
    assert numbers["kind"] == "onnx" and numbers["max_abs_diff"] < 1e-4
    assert numbers["scores"]["onnx"]["metrics"]["accuracy"] == numbers["scores"]["pytorch"]["metrics"]["accuracy"]
    assert set(numbers["latency_ms"]) == {"pytorch", "onnx"} and numbers["latency_ms"]["onnx"]["32"] > 0
    md = (target / "export.md").read_text()
    assert "max abs logit difference" in md and f"{numbers['max_abs_diff']:.3g}" in md
    assert "max abs logit difference" in capsys.readouterr().out  # printed too
    # Dynamic axes: one example, and (text) a longer sequence than any the export saw.
    run = read_run(run_dir)
    ds, collator, processor = eval_set(run, load_model(run_dir))
    features = [ds[i] for i in range(3)]
    if kind == "text":
        batch = processor.pad([{k: v for k, v in f.items() if k != "labels"} for f in features], padding="max_length",
                              max_length=16, return_tensors="pt")
    else:
        batch = {k: v for k, v in collator(features).items() if k != "labels"}
    with torch.no_grad():
        ref = load_model(run_dir)(**batch).logits
    assert (model(**batch).logits - ref).abs().max() < 1e-4
    assert model(**{k: v[:1] for k, v in batch.items()}).logits.shape == (1, 2)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_int8_export_reports_size_latency_and_accuracy(kind, runs, tmp_path):
    import onnx

    run_dir = runs[kind]
    target = export(run_dir, int8=True, to=tmp_path / "deep" / "int8")
    check_readable(run_dir, target)
    graph = onnx.load(str(target / "model.onnx")).graph
    assert any(n.op_type == "MatMulInteger" for n in graph.node)
    ref, out, labels = float_and_exported(run_dir, target)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
    numbers = json.loads((target / "export.json").read_text())
    assert numbers["quantized_layers"] >= 8
    assert set(numbers["scores"]) == {"pytorch", "onnx", "int8"}
    for name in ("pytorch", "onnx", "int8"):
        assert set(numbers["latency_ms"][name]) == {"1", "32"} and min(numbers["latency_ms"][name].values()) > 0
        assert 0.9 <= numbers["scores"][name]["metrics"]["accuracy"] <= 1.0
    assert numbers["size_bytes"]["int8"] < numbers["size_bytes"]["onnx"]
    md = (target / "export.md").read_text()
    assert "ONNX Runtime INT8" in md and "CPU latency, batch 1" in md and "linear layers" in md
    assert f"{numbers['scores']['int8']['metrics']['accuracy']:.4f}" in md


@pytest.mark.parametrize("kind", ["text", "image"])
def test_prune_zeroes_the_fraction_and_keeps_the_head(kind, runs):
    from hftl.runs.export import prunable

    run_dir = runs[kind]
    target = export(run_dir, prune=0.3)
    check_readable(run_dir, target)
    assert (target / "model.safetensors").is_file()
    original, pruned = load_model(run_dir), load_model(target)
    assert type(pruned) is type(original)
    layers, head = prunable(pruned)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    total = sum(m.weight.numel() for _, m in layers)
    assert abs(zeros / total - 0.3) < 0.01
    state, before = pruned.state_dict(), original.state_dict()
    assert head and all(torch.equal(state[k], before[k]) for k in before if k.split(".")[0] in head)
    ref, out, _ = float_and_exported(run_dir, target)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
    numbers = json.loads((target / "export.json").read_text())
    assert abs(numbers["sparsity"] - 0.3) < 0.01 and numbers["head_kept"] == head
    assert "sparsity 30.0%" in (target / "export.md").read_text()
    # Exporting again replaces the earlier export; half the weights is half.
    again = export(run_dir, prune=0.5)
    assert again == target and abs(json.loads((target / "export.json").read_text())["sparsity"] - 0.5) < 0.01


def test_lora_run_is_merged_before_export(text_recipe, tmp_path):
    run_dir = hftl.train(text_recipe(training={"num_train_epochs": 2, "learning_rate": 1e-2},
                                     data={"max_train_samples": 32, "max_eval_samples": 16},
                                     peft={"method": "lora"})).output_dir
    merged = export(run_dir, merge=True)
    assert merged == run_dir / "merged" and not (merged / "adapter_config.json").exists()
    check_readable(run_dir, merged)
    target = export(run_dir, onnx=True)
    check_readable(run_dir, target)
    ref, out, _ = float_and_exported(run_dir, target)  # the PeftModel against the merged graph
    assert (out - ref).abs().max() < 1e-4
    ref, out, _ = float_and_exported(run_dir, merged)
    assert (out - ref).abs().max() < 1e-4


def _no_output(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if "export" in p.name or p.name.startswith(".")], \
        sorted(p.name for p in folder.iterdir())


def _copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("exported-*", ".*"))
    return to


def test_bad_inputs_are_refused_and_nothing_is_written(text_run, tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(HftlError, match="not an hftl output dir"):
        export(tmp_path / "nothing", onnx=True)
    _no_output(tmp_path / "nothing")

    run = _copy_run(text_run, tmp_path / "cut")
    weights = run / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(HftlError, match=r"weights file '.*model\.safetensors' .* is truncated or corrupt") as err:
        export(run, int8=True)
    assert "\n" not in str(err.value)
    _no_output(run)
    weights.unlink()
    with pytest.raises(HftlError, match="holds no model weights"):
        export(run, onnx=True)
    _no_output(run)

    for fraction in (0, 1, 1.5, -0.2, True, "half"):
        with pytest.raises(HftlError, match="strictly between 0 and 1"):
            export(text_run, prune=fraction)
    with pytest.raises(HftlError, match="exactly one of"):
        export(text_run, onnx=True, int8=True)
    with pytest.raises(HftlError, match="exactly one of"):
        export(text_run)
    with pytest.raises(HftlError, match="only PEFT runs can be merged"):
        export(text_run, merge=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(HftlError, match="holds something other than an earlier export"):
        export(text_run, prune=0.5, to=tmp_path / "busy")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]
    with pytest.raises(HftlError, match="would replace the run"):
        export(text_run, prune=0.5, to=text_run)


def test_int8_on_a_conv_net_has_nothing_to_quantize(image_recipe, resnet_dir, tmp_path):
    run_dir = hftl.train(image_recipe(model_dir=resnet_dir, training={"num_train_epochs": 1},
                                      data={"max_train_samples": 8, "max_eval_samples": 4})).output_dir
    with pytest.raises(HftlError, match="Nothing to quantize") as err:
        export(run_dir, int8=True)
    assert "ResNetForImageClassification" in str(err.value) and "convolutions" in str(err.value)
    assert "\n" not in str(err.value)
    _no_output(run_dir)


def test_a_wrong_onnx_graph_fails_the_check_and_leaves_nothing(text_run, onnx_exports, monkeypatch, tmp_path):
    from hftl.runs import onnx as onnx_module

    good = onnx_exports.get("text") or export(text_run, onnx=True)
    run = _copy_run(text_run, tmp_path / "run")
    monkeypatch.setattr(onnx_module, "export_onnx",
                        lambda model, batch, path: shutil.copyfile(good / "model.onnx", path) and list(batch))
    real = onnx_module.run_logits
    monkeypatch.setattr(onnx_module, "run_logits", lambda sess, batch: real(sess, batch) + 0.01)
    wrong = r"ONNX export of BertForSequenceClassification is wrong: .* differ from PyTorch"
    with pytest.raises(HftlError, match=wrong):
        export(run, onnx=True)
    _no_output(run)
