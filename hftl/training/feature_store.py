"""Backbone features kept on disk between runs (`$HFTL_CACHE/features/`), for the feature cache (cache.py).

An entry is the backbone outputs of one split, keyed by everything they depend on: the backbone's weights
(names, dtypes, shapes and bytes of its state dict), the model's class and config, its pooling, and the exact
tensors the backbone is fed (so the data, its order and every preprocessing setting). Anything else -- labels,
the head, learning rates, seeds, epochs -- may change and the entry still serves: the second feature-extraction
run with another head learning rate skips the backbone entirely.

- Safe under concurrent runs: an entry is written to a temporary file beside it and renamed into place (atomic);
  readers see a whole entry or none, and two runs writing the same key write the same bytes.
- Bounded: after each write the least recently used entries go until the folder is under
  `$HFTL_FEATURE_CACHE_MB` (default 4096). A hit refreshes an entry's time.
- `hftl cache info` lists it, `hftl cache clear` empties it; `HFTL_FEATURE_CACHE_DIR` puts it elsewhere,
  `HFTL_FEATURE_CACHE=0` turns it off (the in-memory cache of one run still works).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from hftl.files import file_mode
from hftl.zoo import cache_root

logger = logging.getLogger("hftl")
SUFFIX = ".safetensors"


def root() -> Path | None:
    if os.environ.get("HFTL_FEATURE_CACHE", "1").lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get("HFTL_FEATURE_CACHE_DIR"):
        return Path(os.environ["HFTL_FEATURE_CACHE_DIR"]).expanduser()
    return cache_root() / "features"


def max_bytes() -> int:
    return int(float(os.environ.get("HFTL_FEATURE_CACHE_MB", "4096")) * 2**20)


def _update_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()  # channels_last weights hash as the same bytes
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def model_digest(backbone: torch.nn.Module, task_model: torch.nn.Module, pooling: str) -> str:
    """What the features depend on in the model: the backbone's state dict, the model's class, config and pooling."""
    h = hashlib.sha256()
    for name, t in backbone.state_dict().items():
        h.update(name.encode())
        _update_tensor(h, t)
    config = getattr(task_model, "config", None)
    described = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else ""
    h.update(f"{type(task_model).__qualname__}|{type(backbone).__qualname__}|{pooling}|{described}".encode())
    return h.hexdigest()


class InputDigest:
    """Running digest of the batches fed to the backbone (each tensor's name, dtype, shape and bytes)."""

    def __init__(self, model_key: str):
        self.h = hashlib.sha256(model_key.encode())

    def add(self, indices: list[int], batch: dict) -> None:
        self.h.update(json.dumps(indices).encode())
        for k in sorted(batch):
            if isinstance(batch[k], torch.Tensor):
                self.h.update(k.encode())
                _update_tensor(self.h, batch[k])

    def key(self) -> str:
        return self.h.hexdigest()


def load(key: str) -> dict[str, list[torch.Tensor]] | None:
    folder = root()
    path = folder / f"{key}{SUFFIX}" if folder else None
    if path is None or not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        logger.warning("feature cache entry %s is unreadable (%s): computing the features again", path.name, e)
        return None
    os.utime(path)  # recently used
    out = {}
    for name in [k for k in flat if not k.endswith(".lengths")]:
        data, lengths = flat[name], flat.get(f"{name}.lengths")
        out[name] = list(torch.split(data, lengths.tolist())) if lengths is not None else list(data)
    return out


def save(key: str, store: dict[str, list[torch.Tensor]], meta: dict[str, str]) -> Path | None:
    folder = root()
    if folder is None:
        return None
    from safetensors.torch import save_file

    flat = {}
    for name, rows in store.items():
        if rows and rows[0].dim() >= 2:  # per-token rows of different lengths: concatenated, with their lengths
            flat[name] = torch.cat(rows)
            flat[f"{name}.lengths"] = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        else:
            flat[name] = torch.stack(rows) if rows else torch.empty(0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key[:16]}-", suffix=".tmp")
        os.close(fd)
        save_file({k: v.contiguous() for k, v in flat.items()}, tmp, metadata=meta)
        os.chmod(tmp, file_mode())
        path = folder / f"{key}{SUFFIX}"
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("feature cache not written to %s (%s); the run goes on", folder, e.strerror or e)
        return None
    evict(max_bytes(), keep=path)
    return path


def entries() -> list[Path]:
    folder = root()
    return sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime) if folder and folder.is_dir() else []


def evict(limit: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries until the folder holds at most `limit` bytes (never `keep`)."""
    removed, paths = [], entries()
    total = sum(p.stat().st_size for p in paths)
    for p in paths:
        if total <= limit:
            break
        if p == keep:
            continue
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:  # another run removed it first
            continue
        total -= size
        removed.append(p)
    return removed


def clear() -> tuple[int, int]:
    """Remove every entry (and stale temporary files); (files, bytes) removed."""
    folder = root()
    if folder is None or not folder.is_dir():
        return 0, 0
    n = size = 0
    for p in [*folder.glob(f"*{SUFFIX}"), *folder.glob(".*.tmp")]:
        try:
            s = p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            continue
        n, size = n + 1, size + s
    return n, size


def info() -> str:
    folder = root()
    if folder is None:
        return "feature cache: off (HFTL_FEATURE_CACHE=0)"
    paths = entries()
    total = sum(p.stat().st_size for p in paths)
    lines = [f"feature cache: {folder} -- {len(paths)} entries, {total / 2**20:.1f} MB of {max_bytes() / 2**20:.0f} MB "
             "(HFTL_FEATURE_CACHE_MB)"]
    from safetensors import safe_open

    for p in reversed(paths):
        try:
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001 -- a listing must not fail on one bad file
            meta = {}
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.stat().st_mtime))
        lines.append(f"  {p.stem[:12]}  {p.stat().st_size / 2**20:8.1f} MB  used {when}  "
                     f"{meta.get('model', '?')}  {meta.get('examples', '?')} examples")
    return "\n".join(lines)
