"""Push an output dir (adapter and/or merged model, model card) to the Hub with huggingface_hub.

The token comes from HF_TOKEN or the usual `hf auth login`; it is never printed, logged or written.
The push is the last step of a run: a failed push leaves the output dir complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hftl.errors import HftlError

logger = logging.getLogger(__name__)

# Checkpoints and run logs stay local; the card, config, weights and processor files go up.
_IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", ".*", "merged/**", "training_args.bin"]


def _explain(e: Exception, repo_id: str) -> HftlError:
    status = getattr(getattr(e, "response", None), "status_code", None)
    name = type(e).__name__
    if status == 401:
        why = "the token was refused (401). Set a valid write token in HF_TOKEN or run `hf auth login`."
    elif status == 403:
        why = f"access denied (403): the token cannot write to '{repo_id}' (owned by someone else, or a read-only token)."
    elif status == 404 or name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        why = "the repo or revision was not found (404)."
    elif "Offline" in name:
        why = "HF_HUB_OFFLINE is set: pushing needs the network. Unset it, then run `hftl push`."
    elif "Connect" in name or "Timeout" in name or isinstance(e, (ConnectionError, OSError)):
        why = "the Hub could not be reached (network down?)."
    else:
        why = f"{name}: {str(e).splitlines()[0] if str(e) else ''}"
    return HftlError(f"Push to the Hub repo '{repo_id}' failed: {why} The output dir is complete; retry later with "
                     f"`hftl push <output_dir> --repo-id {repo_id}`.")


def push_output_dir(output_dir: str | Path, hub) -> str:
    """Upload `output_dir` (adapter), `output_dir/merged` (merged) or both, per `hub.upload`. Returns the repo URL."""
    from huggingface_hub import HfApi

    out = Path(output_dir)
    if not out.is_dir():
        raise HftlError(f"'{out}' is not an output dir.")
    is_peft = (out / "adapter_config.json").is_file()
    folders = []
    if not is_peft or hub.upload in ("adapter", "both"):
        folders.append((out, ""))
    if is_peft and hub.upload in ("merged", "both"):
        if not (out / "merged").is_dir():
            raise HftlError(f"hub.upload is '{hub.upload}' but '{out}/merged' does not exist: set peft.merge: true "
                            "or run `hftl export --merge` first.")
        folders.append((out / "merged", "merged" if hub.upload == "both" else ""))
    api = HfApi()
    try:
        url = str(api.create_repo(hub.repo_id, private=hub.private, exist_ok=True))
        if hub.revision:
            api.create_branch(hub.repo_id, branch=hub.revision, exist_ok=True)
        for folder, in_repo in folders:
            api.upload_folder(
                repo_id=hub.repo_id, folder_path=str(folder), path_in_repo=in_repo or None, revision=hub.revision,
                commit_message=hub.commit_message, ignore_patterns=_IGNORE if folder == out else None)
    except Exception as e:  # huggingface_hub raises HTTP, connection and offline errors of several types
        raise _explain(e, hub.repo_id) from None
    logger.info("pushed %s to %s", out, hub.repo_id)
    return url
