"""Pushing runs to the Hub: `hub.push` at the end of `hftl.train`, `hftl push` afterwards, and the errors.

The Hub is tests/hub_server.py in this process; the client code runs in subprocesses because
huggingface_hub reads HF_ENDPOINT at import (see `client_env`). Scripts print one JSON line last.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hub_server import HubServer, client_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Distinctive values, so that a leak into any file or output is detectable.
TOKEN = "hf_hftl_push_token_q1w2e3r4"
BAD_TOKEN = "hf_hftl_wrong_token_z9x8c7"
SENTENCES = ["the movie was good", "it was really awful", "so sad this day"]
FAST = {"num_train_epochs": 1, "learning_rate": 1e-2, "disable_tqdm": True}
SMALL = {"max_train_samples": 32, "max_eval_samples": 16}


def env_for(hub: HubServer, tmp_path: Path, token=TOKEN) -> dict:
    env = client_env(hub, tmp_path, token=token)
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"  # tiny models: extra threads only contend on a small machine
    return env


def run(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert TOKEN not in output and BAD_TOKEN not in output
    return proc


def run_script(hub, tmp_path, name: str, code: str, args: dict, token=TOKEN) -> dict:
    script = tmp_path / f"{name}.py"
    prelude = f"import json, sys\nARGS = json.loads({json.dumps(json.dumps(args))})\n"
    script.write_text(prelude + textwrap.dedent(code))
    proc = run([sys.executable, str(script)], env_for(hub, tmp_path, token))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert hub.errors == [], hub.errors[0]
    # A request with no route means the client asked the Hub for something unexpected (a download mid-run).
    assert hub.unhandled == []
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli_push(hub, tmp_path, output_dir, repo_id, *extra, token=TOKEN) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "hftl.cli", "push", str(output_dir), "--repo-id", repo_id, *extra]
    return run(args, env_for(hub, tmp_path, token), timeout=120)


def assert_no_token_in(paths_or_bytes) -> None:
    for item in paths_or_bytes:
        data = item.read_bytes() if isinstance(item, Path) else item
        assert TOKEN.encode() not in data and BAD_TOKEN.encode() not in data


TRAIN_AND_PUSH = """
import traceback

import torch
from transformers import AutoTokenizer

import hftl

out = {}
try:
    result = hftl.train(ARGS["recipe"])
except hftl.HftlError as e:
    out["error"] = {"type": type(e).__name__, "message": str(e),
                    "raised_in": traceback.extract_tb(e.__traceback__)[-1].filename}
else:
    if result.push_error:  # training succeeded, its outputs are on disk; the push failed
        out["error"] = {"type": "push_error", "message": result.push_error}
    tok = AutoTokenizer.from_pretrained(ARGS["tokenizer"])
    batch = dict(tok(ARGS["sentences"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        logits = result.model.eval()(**batch).logits
    torch.save({"batch": batch, "logits": logits}, ARGS["logits"])
print(json.dumps(out))
"""

DOWNLOAD = """
import torch
from huggingface_hub import snapshot_download
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from hftl.runs.load import load_model

saved = torch.load(ARGS["logits"])
batch, expected = saved["batch"], saved["logits"]
base = AutoModelForSequenceClassification.from_pretrained(ARGS["base"])
models = {
    "peft": PeftModel.from_pretrained(base, ARGS["repo_id"]),
    # transformers looks for adapter_config.json at the repo root whatever `subfolder` says, finds the
    # adapter's and loads its base model instead: adapter_kwargs points that lookup at merged/ too.
    "merged": AutoModelForSequenceClassification.from_pretrained(
        ARGS["repo_id"], subfolder="merged", adapter_kwargs={"subfolder": "merged"}),
    "hftl": load_model(snapshot_download(ARGS["repo_id"])),
}
out = {}
with torch.no_grad():
    for name, model in models.items():
        out[name] = (model.eval()(**batch).logits - expected).abs().max().item()
print(json.dumps(out))
"""


def test_train_push_both_and_download(text_recipe, bert_dir, tmp_path):
    recipe = text_recipe(
        # save_strategy epoch: checkpoint-* folders exist locally, and must not be uploaded.
        training={**FAST, "save_strategy": "epoch"}, data=SMALL, peft={"method": "lora", "merge": True},
        hub={"push": True, "repo_id": "alice/tiny-lora", "upload": "both"})
    out_dir = Path(recipe["training"]["output_dir"])
    logits = tmp_path / "logits.pt"
    args = {"recipe": recipe, "tokenizer": str(bert_dir), "sentences": SENTENCES, "logits": str(logits)}
    with HubServer(token=TOKEN) as hub:
        assert run_script(hub, tmp_path, "train", TRAIN_AND_PUSH, args) == {}

        repo = hub.repos["alice/tiny-lora"]
        files = set(repo.files)
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
        assert {"merged/config.json", "merged/model.safetensors"} <= files
        assert {"adapter_model.safetensors", "merged/model.safetensors"} <= repo.lfs_paths
        assert list(out_dir.glob("checkpoint-*")), "the run should have written checkpoints locally"
        assert not [f for f in files if "checkpoint-" in f or f.endswith("training_args.bin")]
        assert repo.files["adapter_model.safetensors"] == (out_dir / "adapter_model.safetensors").read_bytes()
        card = repo.files["README.md"].decode()
        assert card.startswith("---\nlibrary_name: peft") and "## Adapter" in card
        assert repo.private
        # One commit for adapter and merged model: a failed push never leaves the repo half updated.
        assert repo.commits == ["initial commit", "Upload with hftl"]
        assert_no_token_in(data for commit in repo.history for data in commit.files.values())
        assert_no_token_in(p for p in out_dir.rglob("*") if p.is_file())

        diffs = run_script(hub, tmp_path, "download", DOWNLOAD,
                           {"logits": str(logits), "base": str(bert_dir), "repo_id": "alice/tiny-lora"})
        assert diffs["peft"] < 1e-5 and diffs["hftl"] < 1e-5
        assert diffs["merged"] < 1e-4


def test_bad_token_keeps_outputs_and_says_401(text_recipe, bert_dir, tmp_path):
    recipe = text_recipe(training=FAST, data=SMALL, peft={"method": "lora", "merge": True},
                         hub={"push": True, "repo_id": "alice/tiny-bad", "upload": "both"})
    out_dir = Path(recipe["training"]["output_dir"])
    args = {"recipe": recipe, "tokenizer": str(bert_dir), "sentences": SENTENCES, "logits": str(tmp_path / "l.pt")}
    with HubServer(token=TOKEN) as hub:
        error = run_script(hub, tmp_path, "train", TRAIN_AND_PUSH, args, token=BAD_TOKEN)["error"]
        assert "alice/tiny-bad" not in hub.repos

    assert error["type"] == "push_error"  # reported on the TrainResult: the trained model is not lost
    msg = error["message"]
    assert "alice/tiny-bad" in msg and "401" in msg and "HF_TOKEN" in msg and "hftl push" in msg
    # The training outputs are complete and load.
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "recipe.yaml", "metrics.json",
                 "labels.json", "merged/config.json", "merged/model.safetensors"):
        assert (out_dir / name).is_file(), name
    assert_no_token_in(p for p in out_dir.rglob("*") if p.is_file())
    from hftl.runs.load import load_model

    assert type(load_model(out_dir)).__name__ == "PeftModelForSequenceClassification"


@pytest.fixture(scope="module")
def output_dir(bert_dir, text_csv, tmp_path_factory) -> Path:
    """A finished LoRA run with a merged model, trained in this process (no push)."""
    import torch

    import hftl

    out = tmp_path_factory.mktemp("run") / "out"
    recipe = {
        "task": "text-classification",
        "model": {"model_name_or_path": str(bert_dir)},
        "data": {"train_file": str(text_csv[0]), "validation_file": str(text_csv[1]), "max_seq_length": 16, **SMALL},
        "training": {"output_dir": str(out), **FAST, "per_device_train_batch_size": 8, "save_strategy": "no",
                     "dataloader_num_workers": 0},
        "peft": {"method": "lora", "merge": True},
        "seed": 0,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hftl.train(recipe)
    finally:
        torch.set_num_threads(threads)
    return out


def test_cli_push_after_the_fact(output_dir, tmp_path):
    with HubServer(token=TOKEN) as hub:
        proc = cli_push(hub, tmp_path, output_dir, "alice/x")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip() == f"{hub.url}/alice/x"
        files = set(hub.repos["alice/x"].files)
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "recipe.yaml"} <= files
        assert not [f for f in files if f.startswith("merged/")]  # --upload adapter is the default

        # --upload merged: a plain transformers model at the root, with the run's card.
        proc = cli_push(hub, tmp_path, output_dir, "alice/x-merged", "--upload", "merged", "--no-private")
        assert proc.returncode == 0, proc.stderr[-3000:]
        repo = hub.repos["alice/x-merged"]
        assert {"config.json", "model.safetensors", "README.md"} <= set(repo.files)
        assert "adapter_config.json" not in repo.files and not repo.private
        from huggingface_hub import ModelCard

        card = ModelCard(repo.files["README.md"].decode())
        assert card.data.library_name == "transformers"
        # Its "How to use" loads a plain model from the repo, not an adapter.
        assert 'pipeline("text-classification", model=model_id' in card.text and "Peft" not in card.text.split(
            "## How to use")[1].split("##")[0]
        assert 'model_id = "alice/x-merged"' in card.text
        assert hub.errors == [] and hub.unhandled == []


def test_push_to_someone_elses_repo_says_403(output_dir, tmp_path):
    with HubServer(token=TOKEN, other_owner_repos={"bob/taken"}) as hub:
        proc = cli_push(hub, tmp_path, output_dir, "bob/taken")
        assert hub.repos["bob/taken"].commits == ["initial commit"]
    assert proc.returncode == 1
    assert "hftl: error: Push to the Hub repo 'bob/taken' failed" in proc.stderr
    assert "403" in proc.stderr and "cannot write to 'bob/taken'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_hub_fails_fast_and_clearly(output_dir, tmp_path):
    hub = HubServer(token=TOKEN)
    hub.stop()  # closes the listening socket: HF_ENDPOINT now points at a closed port
    start = time.monotonic()
    proc = cli_push(hub, tmp_path, output_dir, "alice/x")
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert "could not be reached" in proc.stderr and "hftl push" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 30, f"took {elapsed:.0f}s: the push should fail on the first request"


POOLED_DOWNLOAD = """
from transformers import AutoModelForSequenceClassification, pipeline

classify = pipeline("text-classification", model=ARGS["repo_id"], trust_remote_code=True, truncation=True)
out = {"scores": [[p["label"], p["score"]] for p in classify(ARGS["sentences"])]}
try:
    AutoModelForSequenceClassification.from_pretrained(ARGS["repo_id"])
except ValueError as e:
    out["refused"] = str(e)
print()  # transformers' "run the custom code? [y/N]" prompt (answered by EOF) leaves the line open
print(json.dumps(out))
"""


def _train(recipe: dict):
    import torch

    import hftl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return hftl.train(recipe)
    finally:
        torch.set_num_threads(threads)


def test_pushed_mean_pooled_run_loads_with_its_pooling(text_recipe, tmp_path):
    """What `hub.push` uploads works for whoever downloads it: the pooling code goes up with the model, the
    card's snippet names the repo, and a plain load without trust_remote_code is refused."""
    from transformers import pipeline

    result = _train(text_recipe(training=FAST, data=SMALL, model={"pooling": "mean"}))
    local = pipeline("text-classification", model=str(result.output_dir), trust_remote_code=True, truncation=True)
    expected = [[p["label"], p["score"]] for p in local(SENTENCES)]
    with HubServer(token=TOKEN) as hub:
        proc = cli_push(hub, tmp_path, result.output_dir, "alice/pooled")
        assert proc.returncode == 0, proc.stderr[-3000:]
        repo = hub.repos["alice/pooled"]
        assert {"config.json", "model.safetensors", "hftl_pooling.py", "README.md"} <= set(repo.files)
        assert 'model_id = "alice/pooled"' in repo.files["README.md"].decode()
        out = run_script(hub, tmp_path, "download", POOLED_DOWNLOAD, {"repo_id": "alice/pooled", "sentences": SENTENCES})
    assert [label for label, _ in out["scores"]] == [label for label, _ in expected]
    assert max(abs(a[1] - b[1]) for a, b in zip(out["scores"], expected)) < 1e-5
    assert "trust_remote_code=True" in out["refused"]


def test_pooled_adapter_is_pushed_only_with_its_merged_model(text_recipe, tmp_path):
    result = _train(text_recipe(training=FAST, data=SMALL, model={"pooling": "mean"},
                                peft={"method": "lora", "merge": True}))
    with HubServer(token=TOKEN) as hub:
        refused = cli_push(hub, tmp_path, result.output_dir, "alice/pooled-lora")
        assert refused.returncode == 1 and "alice/pooled-lora" not in hub.repos
        assert "mean pooling" in refused.stderr and "--upload merged" in refused.stderr
        assert "Traceback" not in refused.stderr
        ok = cli_push(hub, tmp_path, result.output_dir, "alice/pooled-lora", "--upload", "merged")
        assert ok.returncode == 0, ok.stderr[-3000:]
        repo = hub.repos["alice/pooled-lora"]
        assert {"config.json", "model.safetensors", "hftl_pooling.py"} <= set(repo.files)
        assert "trust_remote_code=True)" in repo.files["README.md"].decode().split("## How to use")[1]


# ------------------------------------------------------------------------------------------ base model by Hub id


def _no_local_path(repo, *paths: Path) -> None:
    """The adapter config and the card name no folder of the trainer's disk (recipe.yaml, the record for
    `hftl train recipe.yaml`, keeps the run's own paths)."""
    for name in ("adapter_config.json", "README.md"):
        for p in paths:
            assert str(p).encode() not in repo.files[name], f"{name} names the local path {p}"


def test_push_with_base_model_records_the_hub_id(output_dir, bert_dir, tmp_path):
    with HubServer(token=TOKEN) as hub:
        proc = cli_push(hub, tmp_path, output_dir, "alice/based", "--base-model", "google-bert/tiny-bert")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Set hub.base_model" not in proc.stderr
        repo = hub.repos["alice/based"]
        assert json.loads(repo.files["adapter_config.json"])["base_model_name_or_path"] == "google-bert/tiny-bert"
        card = repo.files["README.md"].decode()
        assert "\nbase_model: google-bert/tiny-bert\n" in card
        _no_local_path(repo, bert_dir, output_dir)
    # The local run is left as it was.
    assert json.loads((output_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(bert_dir)


def test_push_of_a_local_base_warns_and_strict_refuses(output_dir, tmp_path):
    with HubServer(token=TOKEN) as hub:
        warned = cli_push(hub, tmp_path, output_dir, "alice/local-base")
        assert warned.returncode == 0, warned.stderr[-3000:]
        assert "names its base model by the local path" in warned.stderr and "--base-model" in warned.stderr
        assert "alice/local-base" in hub.repos
        before = len(hub.requests)
        refused = cli_push(hub, tmp_path, output_dir, "alice/strict", "--strict")
        assert refused.returncode == 1 and "Nothing was uploaded" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert "alice/strict" not in hub.repos and len(hub.requests) == before  # not even create_repo


def test_strict_push_of_a_local_base_is_refused_before_training(text_recipe):
    import hftl

    recipe = text_recipe(training=FAST, data=SMALL, peft={"method": "lora"},
                         hub={"push": True, "repo_id": "alice/x", "strict": True})
    with pytest.raises(hftl.HftlError, match=r"'hub\.strict' is true .* set hub\.base_model"):
        hftl.train(recipe)
    assert not Path(recipe["training"]["output_dir"]).exists()


def test_zoo_based_adapter_names_the_zoo_models_hub_id(tmp_path):
    """A run from zoo:minilm-l6 names sentence-transformers/all-MiniLM-L6-v2 -- locally and on the Hub --
    while hftl keeps loading the base offline from the package."""
    from hftl.runs.load import load_model

    out = tmp_path / "zoo-lora"
    result = _train({
        "task": "text-classification", "model": {"model_name_or_path": "zoo:minilm-l6", "pooling": "default"},
        "data": {"dataset_name": "zoo:tweets-sentiment", "max_train_samples": 16, "max_eval_samples": 16,
                 "max_seq_length": 32},
        "peft": {"method": "lora"},
        "training": {"output_dir": str(out), "max_steps": 2, "per_device_train_batch_size": 8, "save_strategy": "no",
                     "eval_strategy": "no", "disable_tqdm": True}})
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    assert f"\nbase_model: {hub_id}\n" in (out / "README.md").read_text()
    assert type(load_model(out)).__name__ == "PeftModelForSequenceClassification"  # offline, from the package
    with HubServer(token=TOKEN) as hub:
        proc = cli_push(hub, tmp_path, out, "alice/zoo-lora")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Set hub.base_model" not in proc.stderr
        repo = hub.repos["alice/zoo-lora"]
        assert json.loads(repo.files["adapter_config.json"])["base_model_name_or_path"] == hub_id
        assert f"\nbase_model: {hub_id}\n" in repo.files["README.md"].decode()
        _no_local_path(repo, Path(result.model.base_model.model.name_or_path), tmp_path)


# ------------------------------------------------------------------------------------------ a Space with the model

SPACE_APP = """
import runpy
import socket

from gradio_client import Client
from huggingface_hub import snapshot_download

# The Space as the Hub serves it, run as the Space runs app.py, except for its launch (a free port here).
space = snapshot_download(ARGS["space_id"], repo_type="space", local_dir=ARGS["dir"])
demo = runpy.run_path(space + "/app.py", run_name="space_app")["demo"]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
_, url, _ = demo.launch(server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
try:
    client = Client(url, verbose=False)
    shown = [client.predict(text, api_name="/predict") for text in ARGS["sentences"]]
finally:
    demo.close()
print(json.dumps({"title": demo.title, "shown": [{c["label"]: c["confidence"] for c in s["confidences"]}
                                                 for s in shown]}))
"""

TRAIN_AND_PREDICT = """
import hftl

result = hftl.train(ARGS["recipe"])
rows = hftl.predict(result.output_dir, ARGS["sentences"])
print(json.dumps({"push_error": result.push_error, "scores": [r["scores"] for r in rows]}))
"""


def _space_card(repo) -> tuple[dict, str]:
    from huggingface_hub import SpaceCard

    card = SpaceCard(repo.files["README.md"].decode())
    return card.data.to_dict(), card.text


def _check_space(repo, model_id: str, private: bool) -> None:
    """The Space: app.py serving `model_id` with hftl, requirements pinning this hftl, front matter for Gradio."""
    import importlib.metadata

    assert set(repo.files) == {"app.py", "requirements.txt", "README.md"}
    assert (repo.sdk, repo.private) == ("gradio", private)
    data, text = _space_card(repo)
    assert data["sdk"] == "gradio" and data["app_file"] == "app.py" and data["models"] == [model_id]
    assert data["sdk_version"] == importlib.metadata.version("gradio") and data["title"]
    assert ("HF_TOKEN" in text) == private
    app = repo.files["app.py"].decode()
    assert f"MODEL = {model_id!r}" in app and 'token=os.environ.get("HF_TOKEN")' in app
    assert "demo = hftl.serve_app(run_dir)" in app
    requirements = repo.files["requirements.txt"].decode().splitlines()
    assert f"hftl[serve]=={importlib.metadata.version('hftl')}" in requirements
    assert f"transformers=={importlib.metadata.version('transformers')}" in requirements


def _same_scores(shown: list[dict], expected: list[dict], tol: float) -> None:
    for got, want in zip(shown, expected, strict=True):
        assert max(got, key=got.get) == max(want, key=want.get)
        assert got == pytest.approx(want, abs=tol)


def test_cli_push_merged_with_space_serves_the_run(output_dir, tmp_path):
    """`hftl push --upload merged --space`: the model repo is an hftl run (recipe and labels go with the merged
    model), and the Space's app.py, run against it, predicts what `hftl predict` does on the original run."""
    import hftl

    expected = [r["scores"] for r in hftl.predict(output_dir, SENTENCES)]
    with HubServer(token=TOKEN) as hub:
        proc = cli_push(hub, tmp_path, output_dir, "alice/merged-demo", "--upload", "merged", "--space")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split() == [f"{hub.url}/alice/merged-demo", f"{hub.url}/spaces/alice/merged-demo"]
        model = hub.repos["alice/merged-demo"]
        assert {"config.json", "model.safetensors", "recipe.yaml", "labels.json"} <= set(model.files)
        assert model.commits == hub.spaces["alice/merged-demo"].commits == ["initial commit", "Upload with hftl"]
        _check_space(hub.spaces["alice/merged-demo"], "alice/merged-demo", private=True)
        assert "peft==" not in hub.spaces["alice/merged-demo"].files["requirements.txt"].decode()  # no adapter
        out = run_script(hub, tmp_path, "space", SPACE_APP, {"space_id": "alice/merged-demo", "sentences": SENTENCES,
                                                              "dir": str(tmp_path / "space")})
    assert out["title"] == "hftl: merged-demo"  # the model's name, not a cache folder's hash
    _same_scores(out["shown"], expected, 1e-4)  # merged weights against base + adapter: float rounding only


def test_recipe_hub_space_pushes_an_adapter_space(text_recipe, bert_dir, tmp_path):
    """hub.space: true at the end of `hftl.train`: an adapter run on a base named by Hub id; the Space downloads
    the adapter, hftl rebuilds the base from the Hub, and the page gives what `hftl predict` gave after training."""
    recipe = text_recipe(model={"model_name_or_path": "alice/tiny-bert"}, training=FAST, data=SMALL,
                         peft={"method": "lora"},
                         hub={"push": True, "repo_id": "alice/tiny-lora", "space": True, "space_id": "alice/lora-demo"})
    with HubServer(token=TOKEN) as hub:
        hub.create_repo("alice/tiny-bert")
        hub.add_commit("alice/tiny-bert", {p.name: p.read_bytes() for p in bert_dir.iterdir() if p.is_file()})
        trained = run_script(hub, tmp_path, "train", TRAIN_AND_PREDICT, {"recipe": recipe, "sentences": SENTENCES})
        assert trained["push_error"] is None
        assert "adapter_config.json" in hub.repos["alice/tiny-lora"].files and "alice/tiny-lora" not in hub.spaces
        space = hub.spaces["alice/lora-demo"]
        _check_space(space, "alice/tiny-lora", private=True)
        assert any(line.startswith("peft==") for line in space.files["requirements.txt"].decode().splitlines())
        out = run_script(hub, tmp_path, "space", SPACE_APP, {"space_id": "alice/lora-demo", "sentences": SENTENCES,
                                                              "dir": str(tmp_path / "space")})
    _same_scores(out["shown"], trained["scores"], 1e-6)


def test_space_of_an_adapter_on_a_local_base_is_refused(output_dir, tmp_path):
    with HubServer(token=TOKEN) as hub:
        proc = cli_push(hub, tmp_path, output_dir, "alice/local-demo", "--space")
        assert hub.repos == {} and hub.spaces == {}  # refused before any upload
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    msg = proc.stderr.split("hftl: error: ")[1]
    assert len(msg.strip().splitlines()) == 1
    assert msg.startswith("hub.space (--space)") and "a folder on this machine" in msg and "--upload merged" in msg
    assert "Nothing was uploaded" in msg


def test_space_push_errors_name_the_key(output_dir, tmp_path):
    with HubServer(token=TOKEN) as hub:
        hub.create_repo("bob/demo", owner="bob", repo_type="space", sdk="gradio")
        bad = cli_push(hub, tmp_path, output_dir, "alice/x", "--upload", "merged", "--space-id", "demo")
        assert bad.returncode == 1 and "Traceback" not in bad.stderr and hub.requests == []
        assert "hub.space_id (--space-id): must be the Space's Hub id, 'user/name'" in bad.stderr
        assert "(got 'demo')" in bad.stderr

        taken = cli_push(hub, tmp_path, output_dir, "alice/x", "--upload", "merged", "--space-id", "bob/demo")
        assert hub.spaces["bob/demo"].commits == ["initial commit"]
        assert "config.json" in hub.repos["alice/x"].files  # the model went up first
    assert taken.returncode == 1 and "Traceback" not in taken.stderr
    msg = taken.stderr.split("hftl: error: ")[1].strip()
    assert len(msg.splitlines()) == 1
    assert msg.startswith("Push of the Space 'bob/demo' (hub.space_id") and "403" in msg
    assert "The model is on the Hub ('alice/x')" in msg and "--space-id bob/demo`" in msg


def test_hub_space_keys_are_checked_with_the_recipe(text_recipe):
    import hftl

    with pytest.raises(hftl.RecipeError, match=r"Recipe key 'hub\.space_id': must be the Space's Hub id"):
        hftl.load_recipe(text_recipe(hub={"space": True, "space_id": "no-slash"}))
    with pytest.raises(hftl.RecipeError, match=r"hub\.space_id names a Space but hub\.space is false"):
        hftl.load_recipe(text_recipe(hub={"space_id": "alice/demo"}))
    hub = hftl.load_recipe(text_recipe(hub={"push": True, "repo_id": "alice/x", "space": True})).hub
    assert (hub.space, hub.space_id) == (True, None)


def test_space_that_could_not_start_is_refused_before_training(text_recipe):
    """An adapter on a local base with hub.space: found when the run is built, before any step or output."""
    import hftl

    recipe = text_recipe(peft={"method": "lora", "r": 4}, hub={"push": True, "repo_id": "alice/x", "space": True})
    with pytest.raises(hftl.HftlError, match=r"^hub\.space \(--space\): .*a folder on this machine"):
        hftl.train(recipe)
    assert not Path(recipe["training"]["output_dir"]).exists()
