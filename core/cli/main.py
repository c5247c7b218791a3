"""`python -m core <verb>`: the command line of the engine.

Each verb is one module of core.cli that registers itself through ``add_parser(subparsers)``,
which sets ``func(args) -> int`` on its parser; the work itself is done by the layers below.
User errors (SourceError, UserError) print one or two plain lines and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from core.errors import UserError

# verb -> module that owns it
VERBS = {
    "extract": "core.cli.extract",
    "ls": "core.cli.ls",
    "project": "core.cli.project",
    "finetune": "core.cli.finetune",
    "evaluate": "core.cli.evaluate",
    "demo": "core.cli.demo",
    "pretrain": "core.cli.pretrain",
    "anomalies": "core.cli.anomalies",
    "index": "core.cli.index",
    "failures": "core.cli.failures",
    "export": "core.cli.export",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors -> exit 2, no traceback
        self.exit(2, f"error: {message}\nsee `{self.prog} --help`\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; with ``only`` (a verb) just that verb's module is imported, so a
    cheap verb does not pay for torch, openTSNE and the rest (`--help` imports all)."""
    parser = _Parser(prog="python -m core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for verb, module in VERBS.items():
        if only in VERBS and verb != only:
            continue
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing incomplete was left in the cache", file=sys.stderr)
        return 130

