"""The hook ``engine/texture/cli.py`` (the dataset builder's command module) looks for: it calls
``add_parser(tsub)`` to register ``texture train`` and ``texture eval``, and ``main(args)`` for any
texture command other than ``dataset``. Stdlib only at import, as every ``python -m engine`` builds
the parser."""

from __future__ import annotations

import argparse

from .train import add_eval_parser, add_train_parser, run_eval, run_train


def add_parser(tsub: argparse._SubParsersAction) -> None:
    add_train_parser(tsub)
    add_eval_parser(tsub)


def main(args: argparse.Namespace) -> int:
    return run_eval(args) if args.texture_command == "eval" else run_train(args)
