"""What every schema section shares: frozen pydantic models that refuse unknown keys, and the value types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from hftl import zoo
from hftl.errors import did_you_mean

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]

# YAML 1.1's boolean words: recipes read them as strings (YAML 1.2), and a field that takes only a boolean
# still accepts them (pydantic does for its bool fields; _bool_words does it for TrainingArguments').
YAML11_BOOLS = {w: True for w in ("yes", "Yes", "YES", "on", "On", "ON")} | {
    w: False for w in ("no", "No", "NO", "off", "Off", "OFF")}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def zoo_alias(value: str | None, table: dict, kind: str) -> str | None:
    """A `zoo:` name must be a known alias: say so at load time, not after the data has loaded."""
    if isinstance(value, str) and value.startswith(zoo.PREFIX) and value[len(zoo.PREFIX):] not in table:
        names = [zoo.PREFIX + k for k in table]
        raise ValueError(f"unknown zoo {kind} {value!r}.{did_you_mean(value, names)} Available: {', '.join(names)}")
    return value
