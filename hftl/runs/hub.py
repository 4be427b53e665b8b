"""Push an output dir (adapter and/or merged model, model card) to the Hub with huggingface_hub.

The token comes from HF_TOKEN or the usual `hf auth login`; it is never printed, logged or written.
The push is the last step of a run: a failed push leaves the output dir complete.
Everything goes up in one commit, so a failed push never leaves the repo half updated. With hub.space, a Gradio
Space that serves the model (hftl/runs/space.py) goes up after it, in a commit of its own.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from pathlib import Path

from hftl import zoo
from hftl.errors import HftlError
from hftl.model import is_local_path
from hftl.recipe import load_recipe
from hftl.runs.card import usage_snippet
from hftl.runs.load import RUN_FILES
from hftl.runs.space import space_id, space_operations
from hftl.tasks import get_task

logger = logging.getLogger(__name__)

# Checkpoints, run logs and the pickled TrainingArguments stay local; card, config, weights, processor go up.
_IGNORE = ["checkpoint-*", "runs/*", ".*", "*/.*", "training_args.bin"]


def _files(folder: Path, skip_merged: bool) -> list[tuple[str, Path]]:
    """(path relative to `folder`, file) for every file to upload from `folder`."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or any(fnmatch.fnmatch(rel, pat) for pat in _IGNORE):
            continue
        if skip_merged and rel.startswith("merged/"):
            continue
        out.append((rel, p))
    return out


def _operations(out: Path, upload: str, recipe=None) -> list:
    """The commit: the adapter at the root, the merged model at the root ("merged") or under merged/ ("both")."""
    from huggingface_hub import CommitOperationAdd

    is_peft = (out / "adapter_config.json").is_file()
    if is_peft and upload in ("merged", "both") and not (out / "merged" / "config.json").is_file():
        raise HftlError(f"hub.upload is '{upload}' but '{out}/merged' holds no merged model: set peft.merge: true "
                        f"or run `hftl export {out} --merge` first.")
    if not is_peft or upload == "adapter":
        return [CommitOperationAdd(rel, str(p)) for rel, p in _files(out, skip_merged=True)]
    if upload == "both":
        return [CommitOperationAdd(rel, str(p)) for rel, p in _files(out, skip_merged=False)]
    # "merged": a plain transformers model at the root; the run's card goes with it, relabelled for the Hub, and
    # its recipe and labels, so that hftl (hftl.load_model, hftl serve, a Space) reads the repo as a run.
    ops = [CommitOperationAdd(rel, str(p)) for rel, p in _files(out / "merged", skip_merged=False)]
    ops += [CommitOperationAdd(name, str(out / name)) for name in RUN_FILES
            if (out / name).is_file() and not (out / "merged" / name).is_file()]
    if (out / "README.md").is_file() and not (out / "merged" / "README.md").is_file():
        from huggingface_hub import ModelCard

        card = ModelCard(_merged_usage((out / "README.md").read_text(encoding="utf-8"), out, recipe))
        card.data.library_name = "transformers"
        ops.append(CommitOperationAdd("README.md", str(card).encode("utf-8")))
    return ops


def _merged_usage(card: str, out: Path, recipe) -> str:
    """The card of a run pushed as its merged model: "How to use" loads a plain model, not an adapter."""
    if recipe is None or not (out / "labels.json").is_file():
        return card
    pooling = recipe.model.pooling if recipe.model.pooling in ("mean", "cls") else "default"
    code = usage_snippet(recipe, get_task(recipe.task), json.loads((out / "labels.json").read_text()), pooling, adapter=False, merged=False)
    return re.sub(r"(## How to use\n\n```python\n).*?(\n```)", lambda m: m.group(1) + code + m.group(2), card,
                  count=1, flags=re.S)


def base_model_id(recipe) -> str | None:
    """The Hub id whoever downloads the run can load its base model from: hub.base_model, the zoo alias's
    origin, or model_name_or_path itself when it is a Hub id. None when the base is known only by a local path."""
    name = recipe.model.model_name_or_path
    if name is None:  # a dual encoder assembled here from two checkpoints: no one Hub id
        return recipe.hub.base_model
    return recipe.hub.base_model or zoo.hub_id(name) or (None if is_local_path(name) else name)


def _retarget(op, repo_id: str, base: str | None):
    """What goes up names the Hub, not the trainer's disk: the card's `model_id` is the repo, and the adapter
    config and card name the base model by its Hub id."""
    from huggingface_hub import CommitOperationAdd

    if op.path_in_repo not in ("README.md", "adapter_config.json"):
        return op
    data = op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes) else Path(op.path_or_fileobj).read_bytes()
    if op.path_in_repo == "adapter_config.json":
        if base is None:
            return op
        config = json.loads(data)
        config["base_model_name_or_path"] = base
        return CommitOperationAdd(op.path_in_repo, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    from huggingface_hub import ModelCard

    card = ModelCard(re.sub(r'^model_id = ".*"  # this folder, or its Hub repo id$', f'model_id = "{repo_id}"',
                            data.decode("utf-8"), flags=re.M))
    if base is not None:
        card.data.base_model = base
    return CommitOperationAdd("README.md", str(card).encode("utf-8"))


def _check_base_model(out: Path, hub, base: str | None) -> None:
    """A base model known only by a path on this disk: warn (one paragraph) or, with hub.strict, refuse."""
    if base is not None:
        return
    adapter = out / "adapter_config.json"
    local = json.loads(adapter.read_text()).get("base_model_name_or_path") if adapter.is_file() else None
    what = (f"the adapter config names its base model by the local path '{local}'" if local else
            "the run's base model is a local folder")
    msg = (f"Pushing '{out}' to '{hub.repo_id}': {what}, so whoever downloads it cannot load the base "
           "(AutoPeftModel..., PeftModel and the Hub's model tree look it up by that name), and the path shows "
           "this machine's file layout. Set hub.base_model (hftl push --base-model) to the base's Hub id.")
    if hub.strict:
        raise HftlError(msg + " Nothing was uploaded (hub.strict is true).")
    logger.warning("%s", msg)


def _check_pooled_adapter(out: Path, upload: str, recipe) -> None:
    """An adapter trained on mean/cls pooling loads wrong through PEFT's loaders (the base's own pooler)."""
    if upload != "adapter" or not (out / "adapter_config.json").is_file() or recipe is None:
        return
    pooling = recipe.model.pooling  # the saved recipe holds the pooling it resolved to
    if pooling in ("mean", "cls"):
        merged = "" if (out / "merged" / "config.json").is_file() else f" (write it first: hftl export {out} --merge)"
        raise HftlError(
            f"'{out}' holds an adapter trained on {pooling} pooling, which PEFT's loaders do not restore (they put "
            f"the adapter on the base model's own pooler), so it would predict differently for whoever downloads it. "
            f"Push the merged model instead: --upload merged or both{merged}; loading it needs trust_remote_code=True.")


def _redact(text: str) -> str:
    """Never let the token reach a message, whatever the error text holds."""
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "<token>") if token else text


def _explain(e: Exception, repo_id: str, model_id: str | None = None) -> HftlError:
    """One paragraph for a failed push to `repo_id`; `model_id`: the model pushed first, when `repo_id` is its
    Space."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    name = type(e).__name__
    if status == 401:
        why = ("the token was refused (401 Unauthorized). Set a valid write token in HF_TOKEN or run "
               "`hf auth login`.")
    elif status == 403:
        why = (f"access denied (403 Forbidden): this token cannot write to '{repo_id}' (it belongs to someone "
               "else, or the token is read-only). Push to a repo under your own name or organisation.")
    elif status == 404 or name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        why = "the repo or revision was not found (404)."
    elif "Offline" in name:
        why = "HF_HUB_OFFLINE is set: pushing needs the network. Unset it, then run `hftl push`."
    elif status is None and ("Connect" in name or "Timeout" in name or isinstance(e, (ConnectionError, OSError))):
        why = f"the Hub could not be reached ({name}: network down or HF_ENDPOINT wrong?)."
    else:
        first = str(e).splitlines()[0] if str(e) else ""
        why = f"{name}{f' ({status})' if status else ''}: {first}"
    if model_id is not None:
        again = f"--repo-id {model_id} --space" + (f" --space-id {repo_id}" if repo_id != model_id else "")
        return HftlError(_redact(f"Push of the Space '{repo_id}' (hub.space_id, default hub.repo_id) failed: {why} "
                                 f"The model is on the Hub ('{model_id}'); retry later with `hftl push <output_dir> "
                                 f"{again}`."))
    return HftlError(_redact(f"Push to the Hub repo '{repo_id}' failed: {why} The output dir is complete; retry "
                             f"later with `hftl push <output_dir> --repo-id {repo_id}`."))


def push_output_dir(output_dir: str | Path, hub) -> list[str]:
    """Upload `output_dir` (adapter), `output_dir/merged` (merged) or both, per `hub.upload`, then with hub.space its
    Space. Returns the URLs: the model repo's, then the Space's."""
    from huggingface_hub import HfApi

    out = Path(output_dir)
    if not out.is_dir():
        raise HftlError(f"'{out}' is not an output dir.")
    # The run's saved recipe (read once): the pooling it resolved to, its base model's Hub id.
    recipe = load_recipe(out / "recipe.yaml") if (out / "recipe.yaml").is_file() else None
    _check_pooled_adapter(out, hub.upload, recipe)
    base = hub.base_model or (base_model_id(recipe) if recipe is not None else None)
    _check_base_model(out, hub, base)
    operations = [_retarget(op, hub.repo_id, base) for op in _operations(out, hub.upload, recipe)]
    space = space_operations(out, hub, recipe, operations) if hub.space else None  # refused before any upload
    api = HfApi()
    try:
        # create_repo first: the cheapest call, so a bad token or an unreachable Hub fails before any upload.
        url = str(api.create_repo(hub.repo_id, private=hub.private, exist_ok=True))
        if hub.revision:
            api.create_branch(hub.repo_id, branch=hub.revision, exist_ok=True)
        api.create_commit(hub.repo_id, operations, commit_message=hub.commit_message, revision=hub.revision)
    except Exception as e:  # huggingface_hub raises HTTP, connection and offline errors of several types
        raise _explain(e, hub.repo_id) from None
    logger.info("pushed %s to %s (%d files)", out, hub.repo_id, len(operations))
    if space is None:
        return [url]
    sid = space_id(hub)
    try:
        space_url = str(api.create_repo(sid, repo_type="space", space_sdk="gradio", private=hub.private, exist_ok=True))
        api.create_commit(sid, space, repo_type="space", commit_message=hub.commit_message)
    except Exception as e:
        raise _explain(e, sid, model_id=hub.repo_id) from None
    logger.info("pushed the Space %s, serving %s", sid, hub.repo_id)
    return [url, space_url]
