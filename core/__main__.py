"""`python -m core <verb>`: see core.cli.main."""
import sys

from core.cli.main import VERBS, build_parser, main  # noqa: F401  (VERBS, build_parser: for tests and scripts)

if __name__ == "__main__":
    sys.exit(main())
