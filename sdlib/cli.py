"""``sdlib eval|train|run``: every option comes from a schema in ``sdlib.config``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from sdlib import config as cfgmod
from sdlib.schema import read_yaml


def add_schema_args(parser: argparse.ArgumentParser, cls, skip: set[str] = frozenset()) -> None:
    """One ``--flag`` per field of ``cls``, documented by the field's own help text."""
    parser.add_argument("--config", help="YAML file of parameters (a preset)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter (repeatable), value read as YAML",
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, flag = hints[f.name], "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f"{f.metadata.get('help', '')} (default: {default})"
        if typing.get_origin(tp) is list:
            parser.add_argument(flag, dest=f.name, nargs="+", default=None, help=text)
        elif tp is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(flag, dest=f.name, type=tp, default=None, help=text)


def schema_from_args(cls, args: argparse.Namespace):
    overrides = dict(cfgmod.parse_override(s) for s in args.set)
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            overrides[f.name] = value
    return cfgmod.load(cls, args.config, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_schema_args(
        sub.add_parser("eval", help="evaluate a policy on problem sets"), cfgmod.EvalConfig
    )
    train = sub.add_parser("train", help="train a LoRA policy: sft, grpo or sdpo")
    algo = next(f for f in dataclasses.fields(cfgmod.TrainConfig) if f.name == "algo")
    train.add_argument("algo", metavar="ALGO", help=algo.metadata["help"])
    add_schema_args(train, cfgmod.TrainConfig, skip={"algo"})
    run = sub.add_parser("run", help="execute experiment notebooks through papermill")
    run.add_argument(
        "notebooks",
        nargs="*",
        default=["all"],
        help="notebook names or unique prefixes (00 ... 05), or all (default)",
    )
    names = ", ".join(cfgmod.presets())
    run.add_argument("--preset", default="organism", help=f"params/<preset>/: {names}")
    run.add_argument(
        "--out",
        default="",
        help="run folder (default: runs/<preset>/<time>); a rerun on the same folder resumes",
    )
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="notebooks run at once after 00 (each kernel on cores / jobs threads; "
        "output in notebooks/<name>.log)",
    )
    run.add_argument(
        "--plan",
        action="store_true",
        help="print the rollouts, tokens and GPU-hours the run would take, and stop",
    )
    run.add_argument(
        "--mean-response",
        type=float,
        default=None,
        help="with --plan: mean response length in tokens (default: every response at its cap)",
    )
    run.add_argument(
        "-p",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="override a parameter of every notebook that has it (YAML value)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "eval":
            from sdlib.evaluate import run_eval

            run_eval(schema_from_args(cfgmod.EvalConfig, args))
        elif args.command == "train":
            from sdlib.train import train

            args.set.append(f"algo={args.algo}")
            run = train(schema_from_args(cfgmod.TrainConfig, args))
            print(f"run folder: {run.path}")
        elif args.command == "run":
            from sdlib.runner import plan, run

            overrides = {k: read_yaml(v, f"-p {k} {v!r}") for k, v in args.p}
            if args.plan:
                plan(args.notebooks, args.preset, overrides, args.mean_response)
            else:
                run(args.notebooks, args.preset, args.out, overrides, jobs=args.jobs)
    except cfgmod.ConfigError as err:
        print(f"sdlib: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "sdlib: interrupted; the same command resumes where this one stopped", file=sys.stderr
        )
        return 130
    except (OSError, ValueError, RuntimeError) as err:
        # model or data not found, a busy run folder, a notebook failed: the message says
        # the fix, so no traceback
        print(f"sdlib: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
