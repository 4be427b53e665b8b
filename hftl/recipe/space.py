"""`hftl sweep --space SPACE.yaml`: dotted recipe keys -> Optuna distributions, checked against the recipe before
any trial runs.

    training.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    strategy.preset: {type: categorical, choices: [feature_extraction, partial, full]}
    peft.r: {type: int, low: 4, high: 32, log: true}

A key the schema does not know (the closest one is named), a distribution its values would break (each bound and
each choice is tried on the recipe alone: the schema's types and ranges, TrainingArguments' own verdict), `low >
high` or a log range through 0 are refused here. A value that only clashes with other keys (a strategy the recipe's
other blocks refuse) is not: that trial fails with its reason and the sweep goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hftl.errors import RecipeError, unknown_key
from hftl.recipe.load import schema_problems
from hftl.recipe.schema import Recipe
from hftl.recipe.training import check_training_values, training_fields
from hftl.recipe.yaml_io import apply_overrides, read_yaml

TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted recipe key
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def probes(self) -> list:
        """The values checked against the recipe: each bound, or each choice."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def distribution(self):
        import optuna

        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log,
                                                        step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)


def _key_problem(key: str) -> str | None:
    """An unknown dotted key, with the closest known one; None when the schema has it."""
    parts = key.split(".")
    top = Recipe.model_fields
    if parts[0] not in top:
        return unknown_key(parts[0], "", top)
    if parts[0] == "training":
        fields = training_fields()
        return None if len(parts) == 2 and parts[1] in fields else unknown_key(".".join(parts[1:]), "training", fields)
    if parts[0] == "peft":  # the PEFT config class's own keys: checked when a trial's recipe loads
        return None
    model: Any = Recipe
    for i, part in enumerate(parts):
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else None
        if fields is None:
            return None  # a free-form mapping below (e.g. layer_map): the trial's recipe judges it
        field = next((f for name, f in fields.items() if part in (name, f.alias)), None)
        if field is None:
            return unknown_key(part, ".".join(parts[:i]), [f.alias or n for n, f in fields.items()])
        args = getattr(field.annotation, "__args__", (field.annotation,))
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return None


def _dimension(key: str, spec, where: str) -> Dimension:
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        got = spec.get("type") if isinstance(spec, dict) else spec
        raise RecipeError(f"Search space {where}: key '{key}' needs a mapping with type: float | int | categorical "
                          f"(got {got!r}), e.g. {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}.")
    kind = spec["type"]
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise RecipeError(f"Search space {where}: key '{key}' ({kind}) does not take {', '.join(extra)}; it takes "
                          f"{', '.join(sorted(allowed - {'type'}))}.")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise RecipeError(f"Search space {where}: key '{key}' is categorical and needs a non-empty list of "
                              f"choices (got {choices!r}).")
        return Dimension(key, kind, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    number = (int,) if kind == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)):
        raise RecipeError(f"Search space {where}: key '{key}' is {kind} and needs numbers low and high of that type "
                          f"(got low {low!r}, high {high!r}).")
    if low > high:
        raise RecipeError(f"Search space {where}: key '{key}' has low {low!r} > high {high!r}.")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise RecipeError(f"Search space {where}: key '{key}' is log-scaled, so low must be > 0 (got {low!r}).")
    if log and spec.get("step") is not None:
        raise RecipeError(f"Search space {where}: key '{key}' takes log or step, not both.")
    return Dimension(key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                     log, spec.get("step"))


def _value_problems(base: dict, dim: Dimension) -> list[str]:
    """What the schema (and TrainingArguments, for training keys) says about each probe value of `dim` alone."""
    out = []
    for value in dim.probes():
        if dim.key.startswith("training."):
            name = dim.key.split(".", 1)[1]
            problems = check_training_values({name: value})
        else:
            quoted = f"'{dim.key}'"
            problems = [p for p in schema_problems(apply_overrides(base, [f"{dim.key}={_yaml(value)}"]))
                        if quoted in p or f"'{dim.key.rsplit('.', 1)[0]}'" in p]
        out += [f"{p} (from the search space's value {value!r})" for p in problems]
    return out


def _yaml(value) -> str:
    """An override's right-hand side for `value` (apply_overrides parses it as YAML)."""
    return json.dumps(value) if not isinstance(value, str) else value


def load_space(path: str | Path, base: dict) -> list[Dimension]:
    """The search space in `path`, checked against the recipe dict `base` (one RecipeError naming every problem)."""
    where = f"'{path}'"
    data = read_yaml(Path(path))
    if not isinstance(data, dict) or not data:
        raise RecipeError(f"Search space {where} must map dotted recipe keys to distributions, e.g. "
                          "training.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}.")
    dims, problems = [], []
    for key, spec in data.items():
        problem = _key_problem(str(key))
        if problem:
            problems.append(f"Search space {where}: {problem}")
            continue
        try:
            dims.append(_dimension(str(key), spec, where))
        except RecipeError as e:
            problems.append(str(e))
    for dim in dims:
        problems += [f"Search space {where}: {p}" for p in _value_problems(base, dim)]
    if problems:
        raise RecipeError(" ".join(problems))
    return dims
