"""Training loops around single runs: domain adaptation by pseudo-label rounds (`self_training:`, `hftl adapt`).

Round 0 trains on the labelled (source) data alone, or is a finished run (`hftl adapt RUN_DIR`). After each round
the model labels the unlabelled target rows; those whose top class probability reaches `threshold` (at most
`max_fraction` of the rows, the most confident first) join the labelled rows, and the next round trains afresh
from the pretrained model on both. Each round reports how many pseudo-labels it kept, per class (a class the
model never predicts confidently stays unadapted), and, when the target rows carry labels or `target_eval` is
given, how right they are. Rounds 0..n-1 are complete run dirs under <output_dir>/rounds/; the last round is
the run in <output_dir>, its card carrying every round's numbers (also in self_training.json).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from hftl.data import load_splits
from hftl.errors import HftlError
from hftl.files import fix_modes, write_json, write_text
from hftl.recipe import load_recipe
from hftl.runs.evaluate import encode_like_run, input_rows, labelled_data, metrics_of, score
from hftl.runs.load import Run, load_model, read_run
from hftl.runs.predict import run_probabilities
from hftl.tasks import get_task
from hftl.training.pipeline import TrainResult, check_output_dir, train_once

logger = logging.getLogger("hftl")


def self_train(recipe, callbacks: list | None = None, start: str | Path | None = None):
    """Run the recipe's self_training rounds; returns the last round's TrainResult (`rounds`: one record each).
    `start`: a finished run dir of this recipe that serves as round 0 instead of training it."""
    st, out = recipe.self_training, recipe.output_dir
    if recipe.training.get("resume_from_checkpoint") not in (None, False):
        raise HftlError("Recipe key 'training.resume_from_checkpoint' cannot be combined with self_training (each "
                        "round trains afresh); start again, or adapt a finished run with hftl adapt RUN_DIR.")
    check_output_dir(recipe, False)
    task = get_task(recipe.task)
    names = _label_names(recipe, task, start)
    probe = Run(out, recipe, task, names)
    unlabeled, held = _unlabeled(probe, st.unlabeled)
    target = _target(probe, st.target_eval, st.unlabeled) if st.target_eval else None
    created = not out.exists()
    rounds: list[dict] = []
    pseudo = None
    try:
        for r in range(st.rounds + 1):
            last = r == st.rounds
            if r == 0 and start is not None:
                run, model = read_run(start), load_model(start)
                metrics = json.loads((run.path / "metrics.json").read_text()) if (run.path / "metrics.json").is_file() else {}
                result = TrainResult(model, None, metrics, run.path, label_names=run.label_names)
            else:
                result = train_once(_round_recipe(recipe, out if last else out / "rounds" / f"round-{r}"), callbacks, pseudo)
                run = read_run(result.output_dir)
            record = {"round": r, "run": str(result.output_dir), "pseudo_labels": 0 if pseudo is None else len(pseudo)}
            record.update({k: v for k, v in result.metrics.items() if k.startswith("eval_")})
            if target is not None:
                record.update(_score_target(run, target, result.model))
            if not last:
                pseudo, _kept = _pseudo_labels(run, result.model, unlabeled, held, st)
                record["next"] = dict(_kept)
            rounds.append(record)
            logger.info("self-training round %d: %s", r, summary(record))
    except BaseException:
        if created and out.exists() and not rounds:
            shutil.rmtree(out, ignore_errors=True)  # nothing finished: leave no half-written output dir
        raise
    _write_report(out, rounds, st, names, len(unlabeled))
    result.rounds = rounds
    return result


def adapt(run_dir: str | Path, unlabeled: str | Path, output_dir: str | Path | None = None, *,
          target_eval: str | Path | None = None, threshold: float = 0.9, rounds: int = 3, max_fraction: float = 1.0,
          overrides: list[str] | None = None):
    """`hftl adapt`: self-training rounds that start from a finished run (round 0) instead of training one; the
    run's own recipe, with a self_training block, trains the rounds into `output_dir` (default <run_dir>-adapted)."""
    run = read_run(run_dir)
    recipe = run.recipe.to_dict()
    recipe["training"] = {k: v for k, v in recipe["training"].items() if k != "resume_from_checkpoint"}
    recipe["training"]["output_dir"] = str(output_dir or f"{Path(run_dir).as_posix().rstrip('/')}-adapted")
    recipe["self_training"] = {"unlabeled": str(unlabeled), "threshold": threshold, "rounds": rounds,
                               "max_fraction": max_fraction, "target_eval": None if target_eval is None else str(target_eval)}
    return self_train(load_recipe(recipe, overrides), start=run_dir)


def _label_names(recipe, task, start) -> list[str]:
    return read_run(start).label_names if start is not None else load_splits(recipe.data, recipe.seed, task).label_names


def _read(run, path: str, key: str):
    return input_rows(run, path, f"Recipe key 'self_training.{key}':")


def _unlabeled(run, path: str):
    """(rows without labels, their true label ids or None): a label column is kept aside, never trained on."""
    rows = _read(run, path, "unlabeled")
    column = run.recipe.data.label_column_name or run.task.label_column
    if column not in rows.column_names:
        return rows, None
    try:
        held = np.asarray(encode_like_run(run, rows, path, "")["labels"])
    except HftlError:  # labels the run does not know (an image folder's own name): plain unlabelled rows
        held = None
    return rows.remove_columns(column), held


def _target(run, path: str, unlabeled: str):
    if Path(path).resolve() == Path(unlabeled).resolve():
        raise HftlError(f"Recipe key 'self_training.target_eval': '{path}' is the unlabelled data itself; score on "
                        "labelled target rows the rounds do not train on.")
    return labelled_data(run, path, "Recipe key 'self_training.target_eval':")


def _score_target(run, target, model) -> dict:
    scored = score(run, target, model=model)
    return {k.replace("eval_", "target_", 1): v for k, v in metrics_of(run, scored.probs, scored.true).items()}


def _pseudo_labels(run, model, unlabeled, held, st):
    """(rows with `labels` = the model's confident predictions, what was kept: counts per class, accuracy)."""
    probs = np.asarray(run_probabilities(run, unlabeled, run.recipe.training.get("per_device_eval_batch_size", 32), model))
    conf, pred = probs.max(-1), probs.argmax(-1)
    order = np.argsort(-conf, kind="stable")
    keep = order[conf[order] >= st.threshold][: int(st.max_fraction * len(unlabeled))]
    keep = np.sort(keep)
    kept = {"kept": int(len(keep)), "of": len(unlabeled),
            "per_class": {name: int((pred[keep] == i).sum()) for i, name in enumerate(run.label_names)}}
    if held is not None and len(keep):
        kept["pseudo_accuracy"] = float((pred[keep] == held[keep]).mean())
    missing = [n for n, c in kept["per_class"].items() if c == 0]
    if missing:
        logger.warning("self-training: no confident pseudo-label for class(es) %s (threshold %s); the next round "
                       "adapts only the others.", ", ".join(missing), st.threshold)
    rows = unlabeled.select(keep.tolist()).add_column("labels", pred[keep].tolist())
    return rows, kept


def _round_recipe(recipe, out: Path):
    training = {**recipe.training, "output_dir": str(out)}
    return recipe.model_copy(update={"training": training, "overwrite_output_dir": True})


def summary(record: dict) -> str:
    shown = {k: v for k, v in record.items() if k in ("pseudo_labels", "eval_accuracy", "target_accuracy")}
    nxt = record.get("next")
    if nxt:
        shown["kept for next"] = f"{nxt['kept']}/{nxt['of']}"
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())


def card_section(rounds: list[dict], st, names: list[str], n_unlabeled: int) -> list[str]:
    """The model card's self-training table: per round the rows trained on and the scores."""
    scores = [k for k in rounds[-1] if k.startswith(("eval_", "target_")) and isinstance(rounds[-1][k], float)
              and not k.endswith(("_loss", "runtime", "per_second"))]
    scored_on = "`eval_*`: the recipe's validation split" + (f"; `target_*`: `{st.target_eval}`" if st.target_eval else "")
    lines = ["", "## Self-training (pseudo-labels)", "",
             f"{n_unlabeled:,} unlabelled rows from `{st.unlabeled}`. Each round after the first trains afresh on the "
             f"labelled rows plus the previous round's predictions with top class probability >= {st.threshold} (at "
             f"most {st.max_fraction:.0%} of the rows, the most confident first). {scored_on}.", "",
             "| round | pseudo-labels trained on | per class | pseudo-label accuracy | " + " | ".join(scores) + " |",
             "|---:|---:|---|---:|" + "---:|" * len(scores)]
    for i, r in enumerate(rounds):
        used = rounds[i - 1]["next"] if i else None
        per_class = ", ".join(f"{n} {used['per_class'][n]}" for n in names) if used else "-"
        acc = f"{used['pseudo_accuracy']:.3f}" if used and "pseudo_accuracy" in used else "-"
        values = " | ".join(f"{r[k]:.4f}" if k in r else "-" for k in scores)
        lines.append(f"| {r['round']} | {r['pseudo_labels']:,} | {per_class} | {acc} | {values} |")
    return lines


def _write_report(out: Path, rounds: list[dict], st, names: list[str], n_unlabeled: int) -> None:
    write_json(out / "self_training.json", {"settings": st.model_dump(mode="json"), "rounds": rounds})
    card = out / "README.md"
    if card.is_file():
        text, section = card.read_text(), "\n".join(card_section(rounds, st, names, n_unlabeled))
        at = text.find("\n## Framework versions")  # before the closing versions list
        write_text(card, text[:at] + "\n" + section + text[at:] if at >= 0 else text.rstrip("\n") + "\n" + section + "\n")
    fix_modes(out)
