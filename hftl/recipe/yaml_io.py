"""YAML in and out, the only place hftl reads it: safe loading (YAML 1.2 scalars, duplicate keys refused) and
`dotted.key=value` overrides typed like YAML."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hftl.errors import RecipeError


class _Loader(yaml.SafeLoader):
    """Safe loading with YAML 1.2 core-schema scalars: PyYAML (YAML 1.1) reads `3e-4` as a string and
    `no`/`yes`/`on`/`off` as booleans (so `eval_strategy: no` became False); here only true/false are booleans."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.learning_rate=3e-4` -> (['training', 'learning_rate'], 0.0003): values are typed like YAML."""
    if "=" not in text:
        raise RecipeError(f"Override '{text}' is not of the form dotted.key=value (e.g. training.learning_rate=3e-4).")
    key, _, raw = text.partition("=")
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"Override '{text}' has an empty key; use dotted.key=value.")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = dict(data)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            child = dict(child) if isinstance(child, dict) else {}
            node[k] = child
            node = child
        node[keys[-1]] = value
    return data


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _UniqueKeyLoader(_Loader):
    """Safe loading that refuses a key given twice in one mapping (plain YAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)):
                if key in seen:
                    raise _DuplicateKey(problem=f"the key {key!r} appears twice in one mapping", problem_mark=key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        hint = " It is a directory." if path.is_dir() else ""
        raise RecipeError(f"Recipe file '{path}' does not exist or is not a file.{hint}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader
    except yaml.constructor.ConstructorError as e:
        raise RecipeError(
            f"Recipe '{path}' uses a YAML tag that safe loading refuses ({e.problem}). "
            "Recipes are plain YAML: mappings, lists, strings, numbers and booleans only."
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"Recipe '{path}' is not valid YAML: {e}".replace("\n", " ")) from None
    except OSError as e:
        raise RecipeError(f"Recipe file '{path}' cannot be read: {e.strerror}.") from None
    if data is None:
        raise RecipeError(f"Recipe '{path}' is empty: a recipe needs at least task, model and data.")
    if not isinstance(data, dict):
        raise RecipeError(
            f"Recipe '{path}' must be a YAML mapping with keys task, model, data, ... (got {type(data).__name__})."
        )
    return data


def dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)
