"""Files a run writes: atomic (temp file + rename), and readable as the umask says.

The bottom of the layout with errors.py: the zoo's converted checkpoints, the model's shipped code, the feature
store and a run's outputs all write through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode the umask gives an ordinary new file (0o644 under umask 022)."""
    return 0o666 & ~umask()


def fix_modes(folder: Path) -> None:
    """Give every file under `folder` the umask's ordinary mode. Temp-file writers create 0600 files
    (mkstemp; safetensors >= 0.8 for weights, safetensors#782), which a teammate or a serving container
    could not read."""
    mode = file_mode()
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink() and (p.stat().st_mode & 0o777) != mode:
            os.chmod(p, mode)


def write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
