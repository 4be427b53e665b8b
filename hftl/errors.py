"""One exception type for every user-facing mistake, and the closest-match helper its messages use."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HftlError(Exception):
    """A problem with the user's recipe, data or model: printed as one paragraph, never as a traceback."""


class RecipeError(HftlError):
    """The recipe itself is wrong (unknown key, bad value, impossible combination)."""


def closest(word: str, options: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, options: Iterable[str]) -> str:
    match = closest(word, options)
    return f" Did you mean '{match}'?" if match else ""


def unknown_key(key: str, section: str, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    where = f"{section}.{key}" if section else key
    shown = ", ".join(allowed) if len(allowed) <= 25 else ", ".join(allowed[:25]) + f" and {len(allowed) - 25} more"
    return f"Unknown recipe key '{where}'.{did_you_mean(key, allowed)} Allowed keys here: {shown}."
