"""The plan table (`hftl plan`, plan.md, the card): per depth its modules, parameters, whether and when it
trains and at which learning rate."""

from __future__ import annotations

from hftl.hooks import HEAD_LABEL, LayerMap, LrAssignment, TrainableSet, strip_wrappers


def _modules_at(names: list[str], limit: int = 3) -> str:
    mods = []
    for n in names:
        parts = strip_wrappers(n).split(".")
        # module path without the parameter (and the adapter internals PEFT adds)
        for marker in ("lora_A", "lora_B", "base_layer", "modules_to_save", "original_module", "lora_magnitude_vector"):
            if marker in parts:
                parts = parts[: parts.index(marker) + 1]
        m = ".".join(parts[:-1][:4]) or parts[0]
        if m not in mods:
            mods.append(m)
    shown = ", ".join(mods[:limit])
    return shown + (f", +{len(mods) - limit} more" if len(mods) > limit else "")


def _lr_cell(lrs: list[float]) -> str:
    return " / ".join(f"{lr:.2e}" for lr in sorted(set(lrs))) if lrs else "-"


def plan_table(lm: LayerMap, ts: TrainableSet, lrs: dict[str, LrAssignment], unfreeze_at: dict[int, str]) -> str:
    """A markdown table: depth, modules, parameters, trainable now, LR at step 0, when it unfreezes."""
    params = ts.params
    rows = ["| depth | group | modules | params | trainable | lr (step 0) | unfreezes |",
            "|---:|---|---|---:|---|---:|---|"]
    total = trainable_now = 0
    for d, label in enumerate(lm.labels):
        names = lm.names_at(d)
        if not names:
            continue
        count = sum(params[n].numel() for n in names)
        cand = [n for n in names if n in ts.candidates]
        active = [n for n in names if n in ts.active]
        total += count
        trainable_now += sum(params[n].numel() for n in active)
        if not cand:
            state = "frozen"
        elif len(active) == len(cand):
            state = "yes" if len(cand) == len(names) else f"partly ({sum(params[n].numel() for n in cand):,})"
        else:
            state = "not yet"
        lr = _lr_cell([lrs[n].lr for n in cand])
        rows.append(f"| {d} | {label} | {_modules_at(names)} | {count:,} | {state} | {lr} | "
                    f"{unfreeze_at.get(d, 'never') if cand else 'never'} |")
    tied = lm.tied_head()
    if tied and not lm.names_at(lm.head_depth):
        shown = ", ".join(f"{strip_wrappers(n).rsplit('.', 1)[0]} (tied to {strip_wrappers(to).rsplit('.', 1)[0]})"
                          for n, to in tied.items())
        rows.append(f"| {lm.head_depth} | {HEAD_LABEL} | {shown} | 0 (tied) | with depth "
                    f"{', '.join(str(lm.depth[to]) for to in tied.values())} | - | - |")
    pct = 100 * trainable_now / max(total, 1)
    rows.append(f"\nTrainable at step 0: {trainable_now:,} of {total:,} parameters ({pct:.2f}%).")
    for n, to in tied.items():
        d = lm.depth[to]
        state = "trains with them" if to in ts.candidates else "stays frozen with them"
        rows.append(f"Tied weights: the head's {strip_wrappers(n)} is {strip_wrappers(to)} (one parameter, depth {d} "
                    f"{lm.labels[d]}): it trains exactly when depth {d} does, at its learning rate; here it {state}.")
    adapted = sorted({strip_wrappers(n).split(".base_layer.")[0] for n in params if ".base_layer." in n})
    if adapted:  # PEFT: which modules target_modules matched
        leaves = sorted({a.rsplit(".", 1)[-1] for a in adapted})
        rows.append(f"Adapter on {len(adapted)} modules ({', '.join(leaves)}), e.g. {adapted[0]}.")
    saved = sorted({strip_wrappers(n).split(".modules_to_save.")[0] for n in params if ".modules_to_save." in n})
    if saved:
        rows.append(f"Trained and saved with the adapter (modules_to_save): {', '.join(saved)}.")
    return "\n".join(rows)
