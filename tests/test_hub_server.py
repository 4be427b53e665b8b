"""Self-test of tests/hub_server.py against the real huggingface_hub / transformers / peft clients.

The clients run in subprocesses (huggingface_hub reads HF_ENDPOINT at import time); each script prints
one JSON line with what it observed, and the assertions run here, next to the server's state.
"""

import hashlib
import http.client
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer, client_env  # noqa: E402

pytestmark = pytest.mark.slow

# Distinctive values, so that a leak into any output is detectable.
TOKEN = "hf_test_token_a1b2c3d4e5"
BAD_TOKEN = "hf_wrong_token_z9y8x7w6"


def run_client(hub, tmp_path, code: str, args: dict | None = None, token=TOKEN) -> dict:
    """Run `code` with the real client against `hub`; it gets `ARGS` and must print a JSON line last."""
    script = tmp_path / "client.py"
    prelude = f"import json, sys\nARGS = json.loads({json.dumps(json.dumps(args or {}))})\n"
    script.write_text(prelude + textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=client_env(hub, tmp_path, token=token),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert TOKEN not in output and BAD_TOKEN not in output
    assert hub.errors == [], hub.errors[0]
    assert hub.unhandled == []
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_raw_http_chunked_body_and_keepalive(capfd):
    with HubServer(token=TOKEN) as hub:
        conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
        # A chunked body must be consumed whole, or the next request on the connection breaks.
        body = json.dumps({"content": "# hi\n", "repoType": "model"}).encode()
        conn.putrequest("POST", "/api/validate-yaml")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.endheaders()
        for i in range(0, len(body), 7):
            piece = body[i : i + 7]
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())) == (200, {"errors": [], "warnings": []})

        conn.request("GET", "/api/whoami-v2", headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["name"] == "alice"

        conn.request("GET", "/api/whoami-v2", headers={"Authorization": f"Bearer {BAD_TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 401
        assert json.loads(resp.read()) == {"error": "Invalid credentials in Authorization header"}

        conn.request("GET", "/api/nothing-here")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404 and hub.unhandled == [("GET", "/api/nothing-here")]
        conn.close()

        assert hub.requests[:2] == [("POST", "/api/validate-yaml"), ("GET", "/api/whoami-v2")]
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_resolve_headers_on_seeded_repo():
    weights, card = b"\x00" * 100, b"# card\n"
    with HubServer(token=TOKEN) as hub:
        hub.create_repo("alice/seeded")
        oid = hub.add_commit("alice/seeded", {"model.safetensors": weights, "README.md": card})
        assert hub.repos["alice/seeded"].lfs_paths == {"model.safetensors"}
        conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)

        conn.request("HEAD", "/alice/seeded/resolve/main/model.safetensors")
        resp = conn.getresponse()
        resp.read()
        sha = hashlib.sha256(weights).hexdigest()
        assert resp.status == 200 and resp.headers["X-Repo-Commit"] == oid
        assert resp.headers["X-Linked-Etag"] == f'"{sha}"' and resp.headers["X-Linked-Size"] == "100"
        assert resp.headers["Content-Length"] == "100"

        conn.request("GET", f"/alice/seeded/resolve/{oid}/README.md")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == card and "X-Linked-Etag" not in resp.headers

        conn.request("GET", "/alice/seeded/resolve/main/missing.txt")
        resp = conn.getresponse()
        resp.read()
        assert (resp.status, resp.headers["X-Error-Code"], resp.headers["X-Repo-Commit"]) == (404, "EntryNotFound", oid)

        conn.request("GET", "/alice/nope/resolve/main/README.md")
        resp = conn.getresponse()
        resp.read()
        assert (resp.status, resp.headers["X-Error-Code"]) == (404, "RepoNotFound")
        conn.close()


SPACE_AND_MODEL = """
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

api = HfApi()
out = {"model": str(api.create_repo("alice/demo")),
       "space": str(api.create_repo("alice/demo", repo_type="space", space_sdk="gradio", private=True))}
out["space_again"] = str(api.create_repo("alice/demo", repo_type="space", space_sdk="gradio", exist_ok=True))
api.upload_file(path_or_fileobj=b"model file", path_in_repo="weights.txt", repo_id="alice/demo")
api.upload_file(path_or_fileobj=b"import gradio", path_in_repo="app.py", repo_id="alice/demo", repo_type="space")
api.upload_file(path_or_fileobj=b"\\x00" * 10, path_in_repo="logo.bin", repo_id="alice/demo", repo_type="space")
out["space_files"] = sorted(api.list_repo_files("alice/demo", repo_type="space"))
out["model_files"] = sorted(api.list_repo_files("alice/demo"))
out["sdk"] = api.space_info("alice/demo").sdk
out["app"] = open(hf_hub_download("alice/demo", "app.py", repo_type="space", cache_dir=ARGS["cache_dir"])).read()
out["snapshot"] = sorted(p.name for p in __import__("pathlib").Path(snapshot_download(
    "alice/demo", repo_type="space", cache_dir=ARGS["cache_dir"])).iterdir())
print(json.dumps(out))
"""


def test_space_repos_live_beside_models(tmp_path):
    """A Space shares its id with a model without touching it: create, commit (LFS too), list, download."""
    with HubServer(token=TOKEN) as hub:
        out = run_client(hub, tmp_path, SPACE_AND_MODEL, {"cache_dir": str(tmp_path / "cache")})
        space, model = hub.spaces["alice/demo"], hub.repos["alice/demo"]
        assert (space.sdk, space.private, model.private) == ("gradio", True, False)
        assert set(space.files) == {"app.py", "logo.bin"} and space.lfs_paths == {"logo.bin"}
        assert set(model.files) == {"weights.txt"}
    assert out["model"] == f"{hub.url}/alice/demo"
    assert out["space"] == out["space_again"] == f"{hub.url}/spaces/alice/demo"
    assert out["space_files"] == ["app.py", "logo.bin"] and out["model_files"] == ["weights.txt"]
    assert out["sdk"] == "gradio" and out["app"] == "import gradio"
    assert out["snapshot"] == ["app.py", "logo.bin"]


UPLOAD_AND_DOWNLOAD = """
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

api = HfApi()
out = {"whoami": api.whoami()["name"]}
out["url"] = str(api.create_repo("alice/adapter", private=True))
api.upload_folder(repo_id="alice/adapter", folder_path=ARGS["folder"], commit_message="add adapter")
# Second creation hits the 409 path; exist_ok turns it into the repo URL.
out["url_again"] = str(api.create_repo("alice/adapter", private=True, exist_ok=True))
out["snapshot"] = snapshot_download("alice/adapter", local_dir=ARGS["snapshot_dir"])
out["single"] = hf_hub_download("alice/adapter", "adapter_model.safetensors", cache_dir=ARGS["cache_dir"])

api.create_branch("alice/adapter", branch="v1")
api.upload_file(path_or_fileobj=b"on a branch", path_in_repo="extra.txt", repo_id="alice/adapter", revision="v1")
out["branch_file"] = hf_hub_download("alice/adapter", "extra.txt", revision="v1", cache_dir=ARGS["cache_dir"])
out["main_files"] = sorted(api.list_repo_files("alice/adapter"))
out["v1_files"] = sorted(api.list_repo_files("alice/adapter", revision="v1"))
print(json.dumps(out))
"""


def test_upload_folder_and_download_roundtrip(tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Test adapter\n")
    (folder / "config.json").write_text(json.dumps({"r": 4, "alpha": 8}))
    save_file({"lora_A": torch.randn(512, 512), "lora_B": torch.randn(4, 512)}, folder / "adapter_model.safetensors")
    local = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert len(local["adapter_model.safetensors"]) > 1_000_000

    with HubServer(token=TOKEN, user="alice") as hub:
        args = {"folder": str(folder), "snapshot_dir": str(tmp_path / "snap"), "cache_dir": str(tmp_path / "cache")}
        out = run_client(hub, tmp_path, UPLOAD_AND_DOWNLOAD, args)

        repo = hub.repos["alice/adapter"]
        assert out["whoami"] == "alice"
        assert out["url"] == out["url_again"] == f"{hub.url}/alice/adapter"
        assert repo.private
        assert repo.files == local
        # Only the weights went through LFS, and the stored object is the exact file.
        assert repo.lfs_paths == {"adapter_model.safetensors"}
        sha = hashlib.sha256(local["adapter_model.safetensors"]).hexdigest()
        assert repo.lfs_objects == {sha: local["adapter_model.safetensors"]}
        assert ("POST", "/alice/adapter.git/info/lfs/objects/batch") in hub.requests
        assert ("POST", "/api/validate-yaml") in hub.requests
        assert [m for m, _ in hub.requests].count("PUT") == 1

        snapshot = Path(out["snapshot"])
        assert {p.name: p.read_bytes() for p in snapshot.iterdir() if p.is_file()} == local
        assert Path(out["single"]).read_bytes() == local["adapter_model.safetensors"]

        assert Path(out["branch_file"]).read_bytes() == b"on a branch"
        assert repo.branches["v1"]["extra.txt"] == b"on a branch"
        assert "extra.txt" not in repo.files
        assert out["main_files"] == sorted(local)
        assert out["v1_files"] == sorted([*local, "extra.txt"])
        assert repo.commits == ["initial commit", "add adapter", "Upload extra.txt with huggingface_hub"]


ERRORS = """
from huggingface_hub import HfApi, hf_hub_download

def attempt(fn):
    try:
        fn()
    except Exception as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        return {"type": type(e).__name__, "status": status, "message": str(e)}
    return None

api = HfApi()
bad = HfApi(token=ARGS["bad_token"])
api.create_repo("alice/private", private=True)
api.upload_file(path_or_fileobj=b"secret", path_in_repo="a.txt", repo_id="alice/private")
out = {
    "bad_create": attempt(lambda: bad.create_repo("alice/other")),
    "bad_upload": attempt(lambda: bad.upload_file(path_or_fileobj=b"x", path_in_repo="b.txt", repo_id="alice/private")),
    "bad_whoami": attempt(lambda: bad.whoami()),
    "anonymous_download": attempt(lambda: hf_hub_download("alice/private", "a.txt", token=False)),
    "taken_create": attempt(lambda: api.create_repo("bob/taken")),
    "taken_exist_ok": attempt(lambda: api.create_repo("bob/taken", exist_ok=True)),
    "taken_upload": attempt(lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="b.txt", repo_id="bob/taken")),
    "missing_file": attempt(lambda: hf_hub_download("alice/private", "nope.txt")),
}
print(json.dumps(out))
"""


def test_error_replies(tmp_path, capfd):
    with HubServer(token=TOKEN, other_owner_repos={"bob/taken"}) as hub:
        out = run_client(hub, tmp_path, ERRORS, {"bad_token": BAD_TOKEN})

        for key in ("bad_create", "bad_upload"):
            assert out[key]["type"] == "HfHubHTTPError" and out[key]["status"] == 401
            assert "401" in out[key]["message"] and "Invalid credentials" in out[key]["message"]
        assert out["bad_whoami"]["status"] == 401
        assert out["anonymous_download"]["type"] == "RepositoryNotFoundError"

        assert out["taken_create"]["status"] == 409
        assert out["taken_exist_ok"] is None
        assert out["taken_upload"]["status"] == 403 and "bob/taken" in out["taken_upload"]["message"]
        assert hub.repos["bob/taken"].commits == ["initial commit"]
        assert out["missing_file"]["type"] == "RemoteEntryNotFoundError"

        # Nothing from a refused write reached the store.
        assert hub.repos["alice/private"].files == {"a.txt": b"secret"}
        assert "alice/other" not in hub.repos
    out, err = capfd.readouterr()
    assert TOKEN not in out + err and BAD_TOKEN not in out + err


TRANSFORMERS_PUSH = """
import torch
from transformers import BertConfig, BertForSequenceClassification

torch.manual_seed(0)
config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99)
model = BertForSequenceClassification(config).eval()
model.push_to_hub("alice/tiny-bert")
reloaded = BertForSequenceClassification.from_pretrained("alice/tiny-bert").eval()
inputs = torch.tensor([[5, 17, 42, 3, 0]])
with torch.no_grad():
    diff = (model(inputs).logits - reloaded(inputs).logits).abs().max().item()
saved, loaded = model.state_dict(), reloaded.state_dict()
weights_equal = saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
print(json.dumps({"max_diff": diff, "weights_equal": weights_equal}))
"""


def test_transformers_push_to_hub_and_from_pretrained(tmp_path):
    with HubServer(token=TOKEN) as hub:
        out = run_client(hub, tmp_path, TRANSFORMERS_PUSH)
        # The round trip is lossless: every tensor bit-identical. (The logits of a reloaded copy can differ in
        # the last float bit with transformers 5.24 / torch 2.14: loaded tensors take another kernel path.)
        assert out["weights_equal"] is True
        assert out["max_diff"] < 1e-6
        repo = hub.repos["alice/tiny-bert"]
        assert {"config.json", "model.safetensors"} <= set(repo.files)
        assert "model.safetensors" in repo.lfs_paths
        assert json.loads(repo.files["config.json"])["hidden_size"] == 32


PEFT_PUSH = """
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99)

def base_model():
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()

inputs = torch.tensor([[5, 17, 42, 3, 0]])
with torch.no_grad():
    base_logits = base_model()(inputs).logits
    # Random (non-zero) LoRA weights, so a missing adapter would show in the logits.
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False)
    peft_model = get_peft_model(base_model(), lora).eval()
    peft_model.push_to_hub("alice/tiny-lora")
    reloaded = PeftModel.from_pretrained(base_model(), "alice/tiny-lora").eval()
    logits, reloaded_logits = peft_model(inputs).logits, reloaded(inputs).logits
out = {
    "max_diff": (logits - reloaded_logits).abs().max().item(),
    "adapter_effect": (logits - base_logits).abs().max().item(),
}
print(json.dumps(out))
"""


def test_peft_lora_push_to_hub_and_from_pretrained(tmp_path):
    with HubServer(token=TOKEN) as hub:
        out = run_client(hub, tmp_path, PEFT_PUSH)
        assert out["max_diff"] == 0.0
        assert out["adapter_effect"] > 0
        repo = hub.repos["alice/tiny-lora"]
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(repo.files)
        assert repo.lfs_paths == {"adapter_model.safetensors"}
        assert json.loads(repo.files["adapter_config.json"])["peft_type"] == "LORA"
