"""`python -m core <verb>`: the command line of the engine.

Each verb lives in the module that does the work and registers itself through
``add_parser(subparsers)``, which sets ``func(args) -> int`` on its parser.
User errors (SourceError, UserError) print one or two plain lines and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

# verb -> module that owns it
VERBS = {
    "extract": "core.features",
    "ls": "core.listing",
    "project": "core.mapstore",
    "finetune": "core.finetune",
    "evaluate": "core.evaluation",
    "demo": "core.demo",
    "pretrain": "core.pretrain",
    "anomalies": "core.anomaly",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors -> exit 2, no traceback
        self.exit(2, f"error: {message}\nsee `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for module in VERBS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
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


if __name__ == "__main__":
    sys.exit(main())
