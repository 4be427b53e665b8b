"""`hftl train|validate|plan|export|push`: the console script. Errors are one paragraph, exit code 1."""

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
    e = sub.add_parser("export", help="write a merged full model from a PEFT output dir")
    e.add_argument("output_dir")
    e.add_argument("--merge", action="store_true", required=True, help="merge the adapter into the base weights")
    e.add_argument("--to", default=None, help="target folder (default <output_dir>/merged)")
    u = sub.add_parser("push", help="push an output dir to the Hugging Face Hub")
    u.add_argument("output_dir")
    u.add_argument("--repo-id", required=True)
    u.add_argument("--private", action=argparse.BooleanOptionalAction, default=True)
    u.add_argument("--revision", default=None)
    u.add_argument("--commit-message", default="Upload with hftl")
    u.add_argument("--upload", choices=("adapter", "merged", "both"), default="adapter")
    u.add_argument("--base-model", default=None, help="Hub id of the base model, when the run's base was a local folder")
    u.add_argument("--strict", action="store_true", help="refuse to push a run whose base model has no Hub id")
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
            shown = {k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, float) and k.startswith("eval_")}
            print(f"done: {result.output_dir}  {shown}")
        # Tear the process group down before exit: gloo ranks otherwise sometimes abort at
        # interpreter shutdown (pytorch/pytorch#179291) and the run exits non-zero.
        result.trainer.accelerator.end_training()
        return 1 if result.push_error else 0
    if args.command == "export":
        from hftl.export import export_merged

        print(export_merged(args.output_dir, args.to))
        return 0
    if args.command == "push":
        from hftl.hub import push_output_dir
        from hftl.recipe import HubSection

        hub = HubSection(push=True, repo_id=args.repo_id, private=args.private, revision=args.revision,
                         commit_message=args.commit_message, upload=args.upload, base_model=args.base_model,
                         strict=args.strict)
        print(push_output_dir(args.output_dir, hub))
        return 0
    return 2


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
