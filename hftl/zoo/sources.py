"""Where the zoo's sources are: files inside installed packages, and the cache of converted checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from hftl.errors import HftlError, did_you_mean
from hftl.files import fix_modes, umask


def package_file(dist: str, suffix: str, install: str) -> Path:
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        raise HftlError(f"The zoo entry needs the package '{dist}', which is not installed. Install it with: {install}") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise HftlError(f"The package '{dist}' is installed but has no file ending in '{suffix}'; reinstall it: {install}")



def cache_root() -> Path:
    """Where converted zoo checkpoints live: $HFTL_CACHE, else $XDG_CACHE_HOME/hftl, else ~/.cache/hftl."""
    root = os.environ.get("HFTL_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "hftl"



_ZOO_FORMAT = 1  # bump when the converted folders change, so old caches are rebuilt


def _zoo_format(marker: Path) -> int | None:
    try:
        return json.loads(marker.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def cached_conversion(name: str, build) -> str:
    """Build a zoo folder once (atomically: a temp folder renamed into place) and reuse it afterwards."""
    folder = cache_root() / "zoo" / name
    marker = folder / "hftl_zoo.json"
    if _zoo_format(marker) == _ZOO_FORMAT:
        return str(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    except OSError as e:
        raise HftlError(f"The zoo entry 'zoo:{name}' is converted once into '{folder}', which cannot be written "
                        f"({e.strerror}); point the environment variable HFTL_CACHE at a writable folder.") from None
    try:
        build(tmp)
        (tmp / "hftl_zoo.json").write_text(json.dumps({"format": _ZOO_FORMAT, "name": name}) + "\n")
        fix_modes(tmp)  # a shared cache: readable as the umask says (mkdtemp and safetensors make 0700/0600)
        os.chmod(tmp, 0o777 & ~umask())
        if folder.exists():  # an outdated conversion (or a half-written one from an older version)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if _zoo_format(marker) != _ZOO_FORMAT:  # not another process finishing first: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)



def choose_config(alias: str, config: str | None, configs: tuple[str, ...] = ("default",)) -> str:
    """The config asked for (None -> the first of `configs`, the default), or a one-paragraph HftlError."""
    if config is None:
        return configs[0]
    if config not in configs:
        hint = did_you_mean(config, configs) if len(configs) > 1 else ""
        raise HftlError(f"Recipe key 'data.dataset_config_name': zoo:{alias} has no config {config!r}; "
                        f"allowed: {', '.join(configs)}.{hint}")
    return config

