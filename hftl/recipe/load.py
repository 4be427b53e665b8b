"""`load_recipe`: read, override and validate a recipe, collecting every problem into one RecipeError before any
weights load. Every other module gets a validated, frozen `Recipe`."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from hftl.errors import RecipeError, unknown_key
from hftl.recipe.checks import cross_checks
from hftl.recipe.schema import Recipe
from hftl.recipe.training import check_training_keys, default_training
from hftl.recipe.yaml_io import apply_overrides, read_yaml


def _format_validation_error(err: ValidationError, model_cls: type[BaseModel]) -> list[str]:
    problems = []
    errors = err.errors()
    for e in errors:
        # pydantic puts the union branch names into loc ('str', "literal['a']", 'function-after[...]', 'FreezeSpec');
        # keep the recipe path only.
        e["where"] = [str(x) for x in e["loc"] if not (isinstance(x, str) and (
            x in ("str", "int", "float", "bool", "none") or x.startswith(_BRANCHES) or x[:1].isupper()))]
    for e in errors:
        loc = e["where"]
        where = ".".join(loc) or "(top level)"
        if _other_branch(e, errors):
            continue
        if e["type"] == "extra_forbidden":
            parent = _section_fields(model_cls, loc[:-1])
            problems.append(unknown_key(loc[-1], ".".join(loc[:-1]), parent))
        elif e["type"] == "missing":
            problems.append(f"Recipe key '{where}' is required but missing.")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            problems.append(f"Recipe key '{where}': {msg}{shown}.")
    # Unions report each branch; keep each message once.
    return list(dict.fromkeys(problems))


_BRANCHES = ("function-", "literal[", "list[", "dict[", "tuple[", "union[", "nullable[")


def _other_branch(e: dict, errors: list[dict]) -> bool:
    """A union error from the branch that does not fit the input's kind (a word for a mapping or vice versa)."""
    siblings = [x for x in errors if x["where"][: len(e["where"])] == e["where"] and x is not e]
    if not siblings:
        return False
    if isinstance(e.get("input"), dict):
        return e["type"] == "literal_error"
    return e["type"] in ("model_type", "dict_type", "model_attributes_type")


def _section_fields(model_cls: type[BaseModel], path: list[str]) -> list[str]:
    cls = model_cls
    for part in path:
        field = cls.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return []
        cls = inner[0]
    return [f.alias or name for name, f in cls.model_fields.items()]


def schema_problems(data: dict) -> list[str]:
    """What the schema alone (keys, types, ranges: no rule across sections) says about a recipe dict."""
    problems: list[str] = []
    training = data.get("training") if isinstance(data.get("training"), dict) else {}
    check_training_keys(training, problems)
    try:
        Recipe.model_validate({**data, "training": default_training(training, "run")})
    except ValidationError as err:
        problems += _format_validation_error(err, Recipe)
    return problems


def load_recipe(source: str | os.PathLike | dict | Recipe, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe. Raises `RecipeError` listing every problem found."""
    if isinstance(source, Recipe):
        source = source.to_dict()
    if isinstance(source, dict):
        data, name = dict(source), "run"
    else:
        path = Path(source)
        data, name = read_yaml(path), path.stem
    data = apply_overrides(data, overrides)

    problems: list[str] = []
    top = set(Recipe.model_fields)
    for key in data:
        if key not in top:
            problems.append(unknown_key(key, "", top))
    training = data.get("training") or {}
    if not isinstance(training, dict):
        problems.append(f"Recipe key 'training' must be a mapping of TrainingArguments names (got {training!r}).")
        training = {}
    check_training_keys(training, problems)
    data = {k: v for k, v in data.items() if k in top}
    data["training"] = default_training(training, name)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        problems += _format_validation_error(err, Recipe)
        recipe = None
    if recipe is not None and not problems:
        problems += cross_checks(recipe)
    if problems:
        where = "" if isinstance(source, dict) else f" '{source}'"
        raise RecipeError(f"Invalid recipe{where}: " + " ".join(problems))
    return recipe
