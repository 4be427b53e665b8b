"""The Gradio Space that `hftl push --space` (hub.space) uploads after the model: app.py, requirements.txt, README.md.

The Space serves the pushed model with hftl's own serve code: app.py downloads the model repo (snapshot_download;
the token is the Space's HF_TOKEN secret, which a private model needs) and launches `hftl.serve_app` on it, the page
and `/predict` API `hftl serve` gives. So the model repo must be an hftl run that loads on another machine:
recipe.yaml at its root, and, for an adapter, a base model the recipe names by Hub id. The Space's id is
hub.space_id, by default hub.repo_id itself: the Hub keeps Spaces and models apart (`/spaces/user/name` beside
`/user/name`), so the demo is found under the model's own name.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from hftl import zoo
from hftl.errors import HftlError
from hftl.model import is_local_path

APP = '''"""A demo of the Hub model {repo_id}: the page and /predict API of `hftl serve` (from `hftl push --space`).

At start it downloads the model (with the Space's HF_TOKEN secret, which a private model needs) and serves it
with hftl's own serve code, so the page gives what `hftl predict` gives on the run.
"""

import os
from pathlib import Path

from huggingface_hub import snapshot_download

import hftl

MODEL = {repo_id!r}
REVISION = {revision!r}

run_dir = snapshot_download(MODEL, revision=REVISION, token=os.environ.get("HF_TOKEN"),
                            local_dir=Path(__file__).resolve().parent / MODEL.split("/")[-1])
demo = hftl.serve_app(run_dir)

if __name__ == "__main__":
    demo.launch(ssr_mode=False, show_error=True)
'''


def space_id(hub) -> str:
    return hub.space_id or hub.repo_id


def _content(op) -> bytes:
    data = op.path_or_fileobj
    return data if isinstance(data, bytes) else Path(data).read_bytes()


def check_space(out: Path, hub, recipe, adapter: bool) -> None:
    """Refuse, before any upload, a Space that could not start: it serves what the model repo holds."""
    if recipe is None:
        raise HftlError(f"hub.space (--space): '{out}' holds no recipe.yaml, so the pushed model is not an hftl run "
                        "and the Space (hftl serve) could not load it. Push the output dir of an hftl run (or an "
                        "`hftl export` folder). Nothing was uploaded.")
    if not adapter:
        return
    m = recipe.model
    for name in (m.model_name_or_path, m.vision_model_name_or_path, m.text_model_name_or_path):
        if name is None or not (is_local_path(name) or name.startswith(zoo.PREFIX)):
            continue
        where = ("a zoo alias, whose package the Space cannot install" if name.startswith(zoo.PREFIX) else
                 "a folder on this machine")
        merged = "" if (out / "merged" / "config.json").is_file() else f"; write it first: hftl export {out} --merge"
        raise HftlError(
            f"hub.space (--space): the Space would serve '{hub.repo_id}' with hftl, which rebuilds an adapter's base "
            f"model from the run's recipe, and that names its base as '{name}', {where}: the Space could not start. "
            f"Push the merged model with the Space (hub.upload: merged, --upload merged{merged}), or train the "
            "adapter on the base's Hub id. Nothing was uploaded.")


def _requirements(recipe, files: dict) -> str:
    """hftl[serve] at this version, and the libraries that read the pushed files at the versions that wrote them."""
    needs = ["transformers"]
    if "adapter_config.json" in files:
        needs.append("peft")
    config = json.loads(_content(files["config.json"])) if "config.json" in files else {}
    if config.get("model_type") == "timm_wrapper" or (recipe.model.model_name_or_path or "").startswith("timm/"):
        needs.append("timm")
    pins = [("hftl[serve]", _version("hftl"))] + [(name, _version(name)) for name in needs]
    return ("# What the Space installs (written by hftl push --space); Gradio comes from README.md's sdk_version.\n"
            + "".join(f"{name}=={v}\n" if v else f"{name}\n" for name, v in pins))


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _card(hub, recipe) -> str:
    from huggingface_hub import SpaceCard, SpaceCardData, constants

    sid, repo_id = space_id(hub), hub.repo_id
    data = SpaceCardData(title=sid.split("/")[-1], sdk="gradio", sdk_version=_version("gradio"),
                         python_version=f"{sys.version_info.major}.{sys.version_info.minor}", app_file="app.py",
                         models=[repo_id], tags=["hftl", recipe.task], pinned=False)
    private = ("\n\nThe model repo is private: add a token that can read it as the secret `HF_TOKEN` in this "
               "Space's settings (app.py passes it to `snapshot_download`); the Space starts once it has it."
               if hub.private else "")
    revision = f" (revision `{hub.revision}`)" if hub.revision else ""
    body = (f"# {sid.split('/')[-1]}\n\nA demo of the {recipe.task} model [{repo_id}]({constants.ENDPOINT}/{repo_id})"
            f"{revision}, served by hftl: the page and `/predict` API of `hftl serve`, which give what `hftl predict` "
            f"gives on the run. `app.py` downloads the model at start and builds the page with `hftl.serve_app`; "
            f"`requirements.txt` pins the hftl that pushed it.{private}\n")
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def space_operations(out: Path, hub, recipe, model_operations: list) -> list:
    """The Space's commit (app.py, requirements.txt, README.md) for the model commit `model_operations`; refuses
    (HftlError, before any upload) a model the Space could not serve."""
    from huggingface_hub import CommitOperationAdd

    files = {op.path_in_repo: op for op in model_operations}
    check_space(out, hub, recipe if "recipe.yaml" in files else None, "adapter_config.json" in files)
    app = APP.format(repo_id=hub.repo_id, revision=hub.revision)
    return [CommitOperationAdd("app.py", app.encode("utf-8")),
            CommitOperationAdd("requirements.txt", _requirements(recipe, files).encode("utf-8")),
            CommitOperationAdd("README.md", _card(hub, recipe).encode("utf-8"))]
