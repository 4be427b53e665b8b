"""`hftl train|validate|plan|lr-find|sweep|adapt|predict|serve|eval|export|push|cache`: the console script. Errors are one paragraph, exit code 1."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from hftl.errors import HftlError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hftl", description="Transfer learning from one YAML recipe.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("train", "train a recipe"), ("validate", "check a recipe and print it fully resolved"),
                        ("plan", "print the layer/freeze/learning-rate plan without training")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("recipe", help="recipe YAML file")
        c.add_argument("overrides", nargs="*", help="dotted.key=value overrides, typed like YAML")
        if name == "train":
            c.add_argument("--dry-run", action="store_true", help="build everything, print the plan, do not train")
    f = sub.add_parser("lr-find", help="learning-rate range test (fastai's) through the recipe's own Trainer")
    f.add_argument("recipe", help="recipe YAML file")
    f.add_argument("overrides", nargs="*", help="dotted.key=value overrides, typed like YAML")
    f.add_argument("--start-lr", type=float, default=1e-7)
    f.add_argument("--end-lr", type=float, default=10.0)
    f.add_argument("--steps", type=int, default=100, help="optimizer steps (the test stops early when the loss diverges)")
    f.add_argument("--output", default="lr_find.png", help="the plot (its numbers go beside it as .json)")
    w = sub.add_parser("sweep", help="search strategy and training keys with Optuna (resumable, many processes on one "
                       "study), then train the best values")
    w.add_argument("recipe", help="recipe YAML file")
    w.add_argument("overrides", nargs="*", help="dotted.key=value overrides, typed like YAML")
    w.add_argument("--space", required=True, help="YAML: dotted recipe keys -> {type: float|int|categorical, ...}")
    w.add_argument("--trials", type=int, required=True, help="finished trials to reach (a re-run continues the study)")
    w.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite in <output_dir>/sweep/)")
    w.add_argument("--study-name", default=None, help="default: the output dir's name")
    w.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    w.add_argument("--jobs", type=int, default=1, help="trials at once on this machine (processes; one GPU each)")
    w.add_argument("--val-fraction", type=float, default=0.2, help="share of the training split trials are scored on")
    w.add_argument("--pruner", choices=("median", "none"), default="median",
                   help="median: stop a trial below the median of earlier ones at the same step; none: never (for "
                        "spaces over the schedule's length, whose long runs are still warming up at first)")
    w.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a --jobs process: trials only
    a = sub.add_parser("adapt", help="self-training on unlabelled target data, starting from a finished run")
    a.add_argument("run_dir", help="the run trained on the labelled (source) data: round 0")
    a.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the run's recipe, typed like YAML")
    a.add_argument("--unlabeled", required=True, help="unlabelled target data: file or folder in the run's data format")
    a.add_argument("--target-eval", default=None, help="labelled target data scored after every round")
    a.add_argument("--threshold", type=float, default=0.9, help="keep predictions with top probability >= this")
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--max-fraction", type=float, default=1.0, help="at most this share of the unlabelled rows per round")
    a.add_argument("--output-dir", default=None, help="default: <run_dir>-adapted")
    r = sub.add_parser("predict", help="run a trained run (or an ensemble of runs) on new inputs")
    r.add_argument("paths", nargs="+", metavar="RUN_DIR... INPUT...",
                   help="one or more run dirs (several: an ensemble), then files, folders, data files or texts")
    r.add_argument("--output", default=None, help="write JSON lines here (default: stdout)")
    r.add_argument("--top-k", type=int, default=None, help="scores of the k most likely labels (default: all up to 10)")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--labels", default=None, help="zero-shot runs: other class names, comma-separated")
    g = sub.add_parser("serve", help="a web app and HTTP API (/predict) for a run, or an ensemble of runs")
    g.add_argument("run_dirs", nargs="+", help="one run dir, or several (their ensemble)")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=7860)
    g.add_argument("--top-k", type=int, default=None, help="labels shown (default: up to 5)")
    v = sub.add_parser("eval", help="metrics, per-class table, confusion matrix and worst examples of a run")
    v.add_argument("run_dirs", nargs="+", help="one run dir, or several (each member and their ensemble)")
    v.add_argument("--data", default=None, help="labelled data file or folder (default: the run's validation split)")
    v.add_argument("--output", default=None, help="folder for the report (default: <run>/eval)")
    v.add_argument("--batch-size", type=int, default=32)
    e = sub.add_parser("export", help="a run as a merged, ONNX, INT8, pruned or GGUF model folder")
    e.add_argument("output_dir")
    kind = e.add_mutually_exclusive_group(required=True)
    kind.add_argument("--merge", action="store_true", help="merge the PEFT adapter into the base weights")
    kind.add_argument("--onnx", action="store_true", help="ONNX model, checked against PyTorch on the run's data")
    kind.add_argument("--int8", action="store_true", help="ONNX with dynamic INT8 linear layers: size, latency, accuracy")
    kind.add_argument("--prune", type=float, metavar="FRACTION", help="global magnitude pruning of linear/conv weights")
    kind.add_argument("--wise-ft", type=float, metavar="ALPHA",
                      help="zero-shot runs: (1 - ALPHA) x the base + ALPHA x the fine-tuned weights (WiSE-FT)")
    kind.add_argument("--gguf", action="store_true", help="causal-LM runs: one GGUF file for llama.cpp / Ollama")
    e.add_argument("--quant", choices=("f16", "q8_0"), default=None,
                   help="with --gguf: the weights' type (default f16)")
    e.add_argument("--to", default=None, help="target folder (default <output_dir>/merged or exported-<kind>)")
    c = sub.add_parser("cache", help="the on-disk feature cache ($HFTL_CACHE/features): list or empty it")
    c.add_argument("action", choices=("info", "clear"))
    u = sub.add_parser("push", help="push an output dir to the Hugging Face Hub")
    u.add_argument("output_dir")
    u.add_argument("--repo-id", required=True)
    u.add_argument("--private", action=argparse.BooleanOptionalAction, default=True)
    u.add_argument("--revision", default=None)
    u.add_argument("--commit-message", default="Upload with hftl")
    u.add_argument("--upload", choices=("adapter", "merged", "both"), default="adapter")
    u.add_argument("--base-model", default=None, help="Hub id of the base model, when the run's base was a local folder")
    u.add_argument("--strict", action="store_true", help="refuse to push a run whose base model has no Hub id")
    u.add_argument("--space", action="store_true", help="also push a Gradio Space that serves the model (hftl serve)")
    u.add_argument("--space-id", default=None, help="the Space's user/name (implies --space; default: --repo-id)")
    return p


def _run(args) -> int:
    import hftl

    if args.command == "validate":
        recipe = hftl.load_recipe(args.recipe, args.overrides)
        print(recipe.to_yaml(), end="")
        return 0
    if args.command == "plan" or (args.command == "train" and args.dry_run):
        print(hftl.plan(args.recipe, args.overrides))
        return 0
    if args.command == "train":
        result = hftl.train(args.recipe, args.overrides)
        if result.trainer.is_world_process_zero():
            _print_rounds(result)
            shown = {k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, float) and k.startswith("eval_")}
            print(f"done: {result.output_dir}  {shown}")
        # Tear the process group down before exit: gloo ranks otherwise sometimes abort at
        # interpreter shutdown (pytorch/pytorch#179291) and the run exits non-zero.
        result.trainer.accelerator.end_training()
        return 1 if result.push_error else 0
    if args.command == "lr-find":
        result = hftl.lr_find(args.recipe, args.overrides, start_lr=args.start_lr, end_lr=args.end_lr,
                              num_steps=args.steps, output=args.output)
        suggested = f"{result.suggestion:.3g}" if result.suggestion else "none (too few points: raise --steps)"
        print(f"suggested training.learning_rate: {suggested}  ({len(result.lrs)} steps, "
              f"{result.lrs[0]:.1e} .. {result.lrs[-1]:.1e}; plot: {result.files['plot']})")
        return 0
    if args.command == "adapt":
        result = hftl.adapt(args.run_dir, args.unlabeled, args.output_dir, target_eval=args.target_eval,
                            threshold=args.threshold, rounds=args.rounds, max_fraction=args.max_fraction,
                            overrides=args.overrides)
        _print_rounds(result)
        print(f"done: {result.output_dir}")
        result.trainer.accelerator.end_training()
        return 0
    if args.command == "predict":
        return _predict(args)
    if args.command == "serve":
        hftl.serve(args.run_dirs, host=args.host, port=args.port, top_k=args.top_k)
        return 0
    if args.command == "eval":
        from hftl.runs.evaluate import ensemble_table

        result = hftl.evaluate(args.run_dirs, args.data, args.output, args.batch_size)
        if "ensemble" in result:
            print(ensemble_table(result))
        else:
            [(run, metrics)] = result["members"].items()
            print(f"{run}: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            print(result["report"]["table"])
        return 0
    if args.command == "sweep":
        result = hftl.sweep(args.recipe, args.space, args.trials, overrides=args.overrides, storage=args.storage,
                            study_name=args.study_name, timeout=args.timeout, jobs=args.jobs,
                            val_fraction=args.val_fraction, pruner=args.pruner, final=not args.worker,
                            report=not args.worker)
        if result.final is not None:
            m = result.final.metrics
            print(f"best of the sweep (eval_{result.metric} {result.best_value:.4f} on the held-out slice): "
                  + ", ".join(f"{k}={v}" for k, v in result.best_values.items()))
            print("trained on the whole training split: " + "  ".join(
                f"{k}={v:.4f}" for k, v in m.items() if k.startswith("eval_") and isinstance(v, float)))
            print(f"outputs in {result.final.output_dir} (the sweep in {result.final.output_dir / 'sweep'})")
        return 0
    if args.command == "export":
        if args.quant is not None and not args.gguf:
            raise HftlError("--quant goes with --gguf: it picks the GGUF file's weight type (f16 or q8_0).")
        print(hftl.export(args.output_dir, merge=args.merge, onnx=args.onnx, int8=args.int8, prune=args.prune,
                          wise_ft=args.wise_ft, gguf=args.gguf, quant=args.quant or "f16", to=args.to))
        return 0
    if args.command == "cache":
        from hftl.training import feature_store

        if args.action == "clear":
            n, size = feature_store.clear()
            print(f"removed {n} feature cache entries ({size / 2**20:.1f} MB) from {feature_store.root()}")
        else:
            print(feature_store.info())
        return 0
    if args.command == "push":
        from pydantic import ValidationError

        from hftl.recipe import HubSection
        from hftl.runs.hub import push_output_dir

        try:
            hub = HubSection(push=True, repo_id=args.repo_id, private=args.private, revision=args.revision,
                             commit_message=args.commit_message, upload=args.upload, base_model=args.base_model,
                             strict=args.strict, space=args.space or args.space_id is not None, space_id=args.space_id)
        except ValidationError as e:  # a flag's value the recipe key would refuse: the same paragraph
            err = e.errors()[0]
            key = ".".join(map(str, err["loc"]))
            raise HftlError(f"hub.{key} (--{key.replace('_', '-')}): {err['msg'].removeprefix('Value error, ')} "
                            f"(got {err['input']!r}).") from None
        print("\n".join(push_output_dir(args.output_dir, hub)))
        return 0
    return 2


def _print_rounds(result) -> None:
    from hftl.training.loops import summary

    for record in result.rounds:
        print(f"self-training round {record['round']}: {summary(record)}")


def _split_runs(paths: list[str]) -> tuple[list[str], list[str]]:
    """Leading arguments that are run dirs (hold a recipe.yaml), then the inputs."""
    from pathlib import Path

    n = 0
    while n < len(paths) and (Path(paths[n]) / "recipe.yaml").is_file():
        n += 1
    if n == 0:
        raise HftlError(f"'{paths[0]}' is not an hftl output dir (no recipe.yaml): `hftl predict RUN_DIR... INPUT...` "
                        "starts with the run dir(s).")
    return paths[:n], paths[n:]


def _predict(args) -> int:
    import json

    import hftl

    runs, inputs = _split_runs(args.paths)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    rows = hftl.predict(runs, inputs, top_k=args.top_k, batch_size=args.batch_size, labels=labels)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.output:
        from pathlib import Path

        from hftl.files import write_text

        write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("HFTL_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except HftlError as e:
        print(f"hftl: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)


if __name__ == "__main__":
    sys.exit(main())
